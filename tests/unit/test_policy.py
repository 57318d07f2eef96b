"""worker.intake.policy: who may run which operation on which pools, and what a bad policy file says."""

from __future__ import annotations

import json
import textwrap

import pytest

from messages.command import decode
from messages.results import ErrorCode
from worker.errors import OperationError
from worker.intake.policy import Policy, PolicyError, pools_touched

EXAMPLE = """
[default]            # users without a rule of their own, and commands without user_id
ops = ["host.info", "*.info", "*.list"]
pools = ["*"]

[users.controlplane]
ops = ["*"]
pools = ["tenant-*", "images"]

[users.monitoring]
ops = ["*.info", "*.list", "host.info"]
"""


def command(op: str, **args):
    return decode(json.dumps({"id": "c-1", "op": op, "args": args}).encode())


def write(tmp_path, text: str, name: str = "policy.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def policy(tmp_path) -> Policy:
    return Policy.load(write(tmp_path, EXAMPLE))


def denied(policy: Policy, user_id, cmd) -> str:
    with pytest.raises(OperationError) as caught:
        policy.check(user_id, cmd)
    assert caught.value.code == ErrorCode.forbidden
    assert caught.value.retryable is False
    return caught.value.message


# --- allowed -------------------------------------------------------------------------------------

@pytest.mark.parametrize("user, cmd", [
    ("controlplane", command("volume.create", pool="tenant-a", name="v", capacity=1)),
    ("controlplane", command("volume.delete", pool="images", name="v")),
    ("controlplane", command("pool.define", name="tenant-b", type="dir", target={"path": "/srv/p"})),
    ("controlplane", command("volume.clone", pool="tenant-a", source="base", name="v", source_pool="images")),
    ("controlplane", command("volume.clone", pool="tenant-a", source="base", name="v")),
    ("controlplane", command("volume.create", pool="tenant-a", name="v", capacity=1, format="qcow2",
                             backing={"pool": "images", "name": "base"})),
    ("controlplane", command("job.cancel", id="other-1")),
    ("controlplane", command("host.info")),
    ("monitoring", command("volume.info", pool="anything", name="v")),
    ("monitoring", command("pool.info", name="secret-pool")),
    ("monitoring", command("pool.list")),
    ("monitoring", command("host.info")),
])
def test_allowed(policy, user, cmd):
    policy.check(user, cmd)


def test_a_rule_without_pools_allows_every_pool(policy):
    policy.check("monitoring", command("volume.list", pool="whatever-0"))


# --- denied by op -------------------------------------------------------------------------------

def test_denied_by_op_names_user_op_and_allowed_patterns(policy):
    message = denied(policy, "monitoring", command("volume.delete", pool="x", name="v"))
    assert message == "user 'monitoring' may not run volume.delete (allowed: *.info, *.list, host.info)"


def test_read_only_rule_denies_pool_writes(policy):
    message = denied(policy, "monitoring", command("pool.stop", name="images"))
    assert "'monitoring'" in message and "pool.stop" in message


def test_job_cancel_is_decided_by_op_alone(tmp_path):
    p = Policy.load(write(tmp_path, '[users.ro]\nops = ["*.info"]\npools = []\n'
                                    '[users.canceller]\nops = ["job.cancel"]\npools = []\n'))
    assert "job.cancel" in denied(p, "ro", command("job.cancel", id="x"))
    p.check("canceller", command("job.cancel", id="x"))


# --- denied by pool ------------------------------------------------------------------------------

def test_denied_by_pool_names_pool_field_and_allowed_pools(policy):
    message = denied(policy, "controlplane", command("volume.create", pool="other", name="v", capacity=1))
    assert message == ("user 'controlplane' may not use pool 'other' (pool) in volume.create "
                       "(allowed pools: tenant-*, images)")


def test_pool_ops_check_the_name(policy):
    message = denied(policy, "controlplane", command("pool.delete", name="system"))
    assert "pool 'system' (name)" in message and "pool.delete" in message


def test_clone_from_a_source_pool_outside_the_allowed_pools(policy):
    cmd = command("volume.clone", pool="tenant-a", source="base", name="v", source_pool="secret")
    message = denied(policy, "controlplane", cmd)
    assert "pool 'secret' (source_pool)" in message and "volume.clone" in message


def test_clone_into_a_pool_outside_the_allowed_pools(policy):
    cmd = command("volume.clone", pool="secret", source="base", name="v", source_pool="images")
    assert "pool 'secret' (pool)" in denied(policy, "controlplane", cmd)


def test_backing_pool_outside_the_allowed_pools(policy):
    cmd = command("volume.create", pool="tenant-a", name="v", capacity=1, format="qcow2",
                  backing={"pool": "secret", "name": "base"})
    assert "pool 'secret' (backing.pool)" in denied(policy, "controlplane", cmd)


def test_attach_checks_the_pool(policy):
    cmd = command("volume.attach", domain="vm1", pool="secret", name="v", target="vdb")
    assert "pool 'secret'" in denied(policy, "controlplane", cmd)


def test_glob_is_case_sensitive(policy):
    assert "'Tenant-a'" in denied(policy, "controlplane", command("volume.list", pool="Tenant-a"))


def test_empty_pools_allows_only_ops_without_pools(tmp_path):
    p = Policy.load(write(tmp_path, '[users.u]\nops = ["*"]\npools = []\n'))
    p.check("u", command("host.info"))
    p.check("u", command("pool.list"))
    assert "(allowed pools: no pool)" in denied(p, "u", command("pool.info", name="a"))


# --- default rule --------------------------------------------------------------------------------

def test_unknown_user_falls_to_default(policy):
    policy.check("stranger", command("volume.info", pool="p", name="v"))
    message = denied(policy, "stranger", command("volume.create", pool="p", name="v", capacity=1))
    assert message == ("user 'stranger' (no rule of its own, default rule) may not run volume.create "
                       "(allowed: host.info, *.info, *.list)")


def test_user_id_none_uses_default(policy):
    policy.check(None, command("host.info"))
    message = denied(policy, None, command("volume.delete", pool="p", name="v"))
    assert message.startswith("a command without user_id may not run volume.delete")


def test_a_user_rule_replaces_the_default(tmp_path):
    p = Policy.load(write(tmp_path, '[default]\nops = ["*"]\n[users.narrow]\nops = ["host.info"]\n'))
    p.check("someone", command("volume.delete", pool="p", name="v"))
    assert "volume.delete" in denied(p, "narrow", command("volume.delete", pool="p", name="v"))


def test_no_default_section_denies_everyone_without_a_rule(tmp_path):
    p = Policy.load(write(tmp_path, '[users.admin]\nops = ["*"]\n'))
    p.check("admin", command("pool.delete", name="x"))
    message = denied(p, "guest", command("host.info"))
    assert "'guest'" in message and "no [default] section" in message
    assert "without user_id" in denied(p, None, command("host.info"))


def test_empty_file_denies_everything(tmp_path):
    p = Policy.load(write(tmp_path, ""))
    denied(p, "anyone", command("host.info"))


def test_allow_all_allows_everything():
    p = Policy.allow_all()
    p.check(None, command("pool.delete", name="x"))
    p.check("whoever", command("volume.wipe", pool="p", name="v"))
    assert "every command is allowed" in p.summary()


def test_user_ids_match_exactly(policy):
    # 'Monitoring' is not 'monitoring': it falls to the default rule.
    assert "no rule of its own" in denied(policy, "Monitoring", command("volume.delete", pool="p", name="v"))


def test_summary(policy):
    assert policy.summary() == "2 user rule(s) (controlplane, monitoring), a [default] rule"


# --- pools a command touches ---------------------------------------------------------------------

@pytest.mark.parametrize("cmd, expected", [
    (command("host.info"), []),
    (command("pool.list"), []),
    (command("job.cancel", id="x"), []),
    (command("volume.detach", domain="vm", target="vdb"), []),
    (command("pool.info", name="a"), [("name", "a")]),
    (command("pool.define", name="a", type="logical", source={"name": "vg0"}), [("name", "a")]),
    (command("volume.list", pool="a"), [("pool", "a")]),
    (command("volume.clone", pool="a", source="s", name="n"), [("pool", "a")]),
    (command("volume.clone", pool="a", source="s", name="n", source_pool="b"),
     [("pool", "a"), ("source_pool", "b")]),
    (command("volume.clone", pool="a", source="s", name="n", source_pool="a"), [("pool", "a")]),
    (command("volume.create", pool="a", name="n", capacity=1, format="qcow2", backing={"pool": "b", "name": "x"}),
     [("pool", "a"), ("backing.pool", "b")]),
    (command("volume.attach", domain="vm", pool="a", name="n", target="vdb"), [("pool", "a")]),
])
def test_pools_touched(cmd, expected):
    assert pools_touched(cmd) == expected


# --- invalid files -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, fragment", [
    ("[default]\nops = [\n", "is not valid TOML"),
    ("[default]\nops = [1]\n", "default.ops[0] must be a string, got 1"),
    ('[default]\nops = "*"\n', "default.ops must be a list of strings, got '*'"),
    ('[users.x]\nops = ["*"]\npools = ["a", 2]\n', "users.x.pools[1] must be a string, got 2"),
    ('[users.x]\npools = ["a"]\n', "users.x.ops is required"),
    ('[users.x]\nops = ["*"]\nallow = true\n', "users.x.allow is not a known key (a rule takes ops and pools)"),
    ('[defaults]\nops = ["*"]\n', "defaults is not a known key (the file takes [default] and [users.<user_id>] tables)"),
    ('users = 3\n', "users must be a table, got 3"),
    ('default = ["*"]\n', "default must be a table"),
    ('[default]\nops = [""]\n', "default.ops[0]"),
    ('[default]\nops = ["volume.delet"]\n', "default.ops: 'volume.delet' matches no operation"),
])
def test_invalid_files_name_the_file_and_the_problem(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        Policy.load(path)
    message = str(caught.value)
    assert str(path) in message
    assert fragment in message


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path / "absent.toml")


def test_a_directory_is_not_a_policy(tmp_path):
    with pytest.raises(PolicyError, match="is a directory"):
        Policy.load(tmp_path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[default]\nops = ["\xe9"]\n')
    with pytest.raises(PolicyError, match=str(path)):
        Policy.load(path)
