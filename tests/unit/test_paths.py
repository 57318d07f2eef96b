"""worker.handlers.paths: where pool targets, upload sources and download destinations may point."""

from __future__ import annotations

import pytest

from messages.pools import PoolDefineArgs
from worker.errors import OperationError
from worker.handlers.paths import check_local_file, check_pool_target, is_local


def dir_pool(path: str) -> PoolDefineArgs:
    return PoolDefineArgs(name="p", type="dir", target={"path": path})


@pytest.mark.parametrize("uri, local", [("qemu:///system", True), ("qemu+unix:///system", True),
                                        ("test:///default", True), ("qemu+ssh://kvm-02/system", False),
                                        ("qemu+tls://kvm-02.example.com/system", False)])
def test_is_local(uri, local):
    assert is_local(uri) is local


def test_a_pool_target_through_a_symlink_out_of_the_roots_is_forbidden_when_libvirt_is_local(tmp_path):
    """Found by the live fuzz test: root/out -> a directory outside the root, and pool.define with
    target root/out/p made libvirt build the pool's directory outside ALLOWED_ROOTS."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "out").symlink_to(outside)
    with pytest.raises(OperationError) as refused:
        check_pool_target(dir_pool(f"{root}/out/p"), [str(root)], local=True)
    assert refused.value.code.value == "forbidden"
    assert f"resolves to '{outside}/p'" in refused.value.message
    check_pool_target(dir_pool(f"{root}/out/p"), [str(root)], local=False)  # remote: as written
    check_pool_target(dir_pool(f"{root}/p"), [str(root)], local=True)


def test_a_root_that_is_itself_a_symlink_still_holds_its_pools(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    check_pool_target(dir_pool(f"{tmp_path}/link/p"), [f"{tmp_path}/link"], local=True)


def test_a_local_file_through_a_symlink_is_checked_where_it_leads(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(OperationError, match="resolves to '/etc/passwd'"):
        check_local_file(str(root / "passwd"), [str(root)], "upload source")
