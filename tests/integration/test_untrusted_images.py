"""Untrusted images: uploads of images crafted with qemu-img — a backing file naming a host file, an
external data file, a qcow2 into a raw volume — are refused `invalid` and leave nothing attachable;
volume.attach writes the declared format even after libvirt's probing says otherwise."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import call_async, error_of, ok, wait_for
from tests.integration.domains import INACTIVE, domains  # noqa: F401 (a fixture)
from tests.integration.test_transfers import Site
from worker.virt import disk_xml

pytestmark = pytest.mark.integration

MiB = 2**20
HOST_FILE = "/etc/hostname"


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def info(path: str) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                                     capture_output=True, text=True).stdout)


def crafted(root: Path, name: str, fmt: str = "qcow2", *options: str) -> Path:
    image = root / name
    qemu_img("create", "-q", "-f", fmt, *options, str(image), "1M")
    return image


def volume(client, pool: str, name: str, fmt: str, fill: bool = True) -> dict:
    made = ok(client.call("volume.create", {"pool": pool, "name": name, "capacity": 16 * MiB, "format": fmt}))
    if fill and fmt == "raw":
        Path(made["path"]).write_bytes(b"\x5a" * 16 * MiB)
    return made


def upload(client, pool: str, name: str, image: Path) -> str:
    return error_of(client.call("volume.upload", {"pool": pool, "name": name, "source": {"path": str(image)}}),
                    "failed", "invalid")


def test_a_qcow2_naming_a_host_file_is_refused_in_a_raw_volume_and_zeroed(harness, client, pool, domains):
    made = volume(client, pool, "disk.raw", "raw")
    image = crafted(harness.root, "evil.qcow2", "qcow2", "-F", "raw", "-b", HOST_FILE)
    message = upload(client, pool, "disk.raw", image)
    print(f"raw volume, qcow2 with a host backing file: {message}")
    assert message == (f"the data uploaded into volume 'disk.raw' in pool '{pool}' was refused: its first bytes are "
                       f"a qcow2 image header, but the volume's declared format is 'raw'; it names the backing file "
                       f"'{HOST_FILE}'. The volume was wiped back to zeros, so that nothing of it can be attached")
    assert Path(made["path"]).read_bytes() == bytes(16 * MiB)
    after = ok(client.call("volume.info", {"pool": pool, "name": "disk.raw"}))
    assert (after["format"], after["capacity"], after["backing"]) == ("raw", 16 * MiB, None)

    dom = harness.name("dom")
    domains.define(dom)
    ok(client.call("volume.attach", {"domain": dom, "pool": pool, "name": "disk.raw", "target": "vdb"}))
    disk = disk_xml.find(domains.xml(dom)[1], "vdb")
    assert disk is not None and "type='raw'" in disk.xml.replace('"', "'")


def test_a_plain_qcow2_is_refused_in_a_raw_volume(harness, client, pool):
    made = volume(client, pool, "plain.raw", "raw")
    message = upload(client, pool, "plain.raw", crafted(harness.root, "plain.qcow2"))
    print(f"raw volume, self-contained qcow2: {message}")
    assert "its first bytes are a qcow2 image header, but the volume's declared format is 'raw'." in message
    assert "backing" not in message
    assert Path(made["path"]).read_bytes() == bytes(16 * MiB)


def test_a_qcow2_volume_takes_a_self_contained_qcow2_and_refuses_references(harness, client, pool):
    made = volume(client, pool, "disk.qcow2", "qcow2")
    good = crafted(harness.root, "good.qcow2")
    uploaded = ok(client.call("volume.upload", {"pool": pool, "name": "disk.qcow2", "source": {"path": str(good)}}))
    assert uploaded["format"] == "qcow2" and Path(made["path"]).read_bytes()[:good.stat().st_size] == good.read_bytes()
    assert uploaded["capacity"] == MiB, "the volume is now the uploaded image, 1 MiB of virtual size"

    backed = crafted(harness.root, "backed.qcow2", "qcow2", "-F", "raw", "-b", HOST_FILE)
    message = upload(client, pool, "disk.qcow2", backed)
    print(f"qcow2 volume, qcow2 with a host backing file: {message}")
    assert message.endswith(f"was refused: it names the backing file '{HOST_FILE}'. The volume was made again as "
                            f"an empty qcow2 volume of {MiB} bytes, so that nothing of it can be attached")
    held = info(made["path"])
    assert (held["format"], held["virtual-size"], held.get("backing-filename")) == ("qcow2", MiB, None)

    data_file = harness.root / "outside-data.raw"
    external = crafted(harness.root, "external.qcow2", "qcow2", "-o", f"data_file={data_file}")
    message = upload(client, pool, "disk.qcow2", external)
    print(f"qcow2 volume, qcow2 with an external data file: {message}")
    assert f"it keeps its data in an external data file '{data_file}'" in message
    held = info(made["path"])
    assert held["format"] == "qcow2" and "data-file" not in held["format-specific"]["data"]


def test_other_formats_and_an_overlay_keep_their_declared_format(harness, client, pool):
    made = volume(client, pool, "q.raw", "raw")
    message = upload(client, pool, "q.raw", crafted(harness.root, "backed.qed", "qed", "-F", "raw", "-b", HOST_FILE))
    print(f"raw volume, qed with a host backing file: {message}")
    assert "its first bytes are a qed image header" in message and f"backing file '{HOST_FILE}'" in message
    assert Path(made["path"]).read_bytes() == bytes(16 * MiB)

    ok(client.call("volume.create", {"pool": pool, "name": "base.raw", "capacity": 16 * MiB}))
    overlay = ok(client.call("volume.create", {"pool": pool, "name": "top.qcow2", "capacity": 16 * MiB,
                                               "format": "qcow2", "backing": {"pool": pool, "name": "base.raw"}}))
    upload(client, pool, "top.qcow2", crafted(harness.root, "other.qcow2", "qcow2", "-F", "raw", "-b", HOST_FILE))
    held = info(overlay["path"])
    assert (held["format"], held["backing-filename"]) == ("qcow2", overlay["backing"]["path"]), \
        "put back as the overlay of its own backing volume"


def test_attach_writes_the_declared_format_whatever_libvirt_probes(harness, client, pool, domains):
    made = volume(client, pool, "guest.raw", "raw", fill=False)
    # What a guest could write into its raw disk: a qcow2 header naming a host file.
    image = crafted(harness.root, "written-by-a-guest.qcow2", "qcow2", "-F", "raw", "-b", HOST_FILE)
    with open(made["path"], "r+b") as handle:
        handle.write(image.read_bytes())
    ok(client.call("pool.refresh", {"name": pool}))
    probed = ok(client.call("volume.info", {"pool": pool, "name": "guest.raw"}))
    assert probed["format"] == "qcow2" and probed["backing"]["path"] == HOST_FILE, "libvirt probes the content"
    dom = harness.name("dom")
    domains.define(dom)
    ok(client.call("volume.attach", {"domain": dom, "pool": pool, "name": "guest.raw", "target": "vdb"}))
    disk = disk_xml.find(domains.xml(dom)[1], "vdb")
    assert disk is not None and "type='raw'" in disk.xml.replace('"', "'")


def test_a_url_upload_cancelled_after_a_dangerous_header_leaves_zeros(make_worker, tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    site = Site(root, pause=0.05)
    try:
        harness = make_worker(url_allowlist=[f"{site.base}/slow/"])
        client = harness.client()
        pool = harness.running_pool(client)
        made = volume(client, pool, "slow.raw", "raw")
        image = crafted(root, "evil.qcow2", "qcow2", "-F", "raw", "-b", HOST_FILE)
        image.write_bytes(image.read_bytes().ljust(8 * MiB, b"\x01"))  # long enough to cancel half-way
        thread, out = call_async(harness.client, "volume.upload", {"pool": pool, "name": "slow.raw",
                                 "source": {"url": f"{site.base}/slow/evil.qcow2"}}, command_id="evil-url-1")
        wait_for(lambda: Path(made["path"]).read_bytes()[:4] == b"QFI\xfb", 30, "the header to be written")
        assert ok(client.call("job.cancel", {"id": "evil-url-1"}))["state"] == "cancelling"
        thread.join(60)
        error_of(out[0], "cancelled", "cancelled")
        assert Path(made["path"]).read_bytes() == bytes(16 * MiB)
    finally:
        site.close()
