"""The per-pool-type table (worker.virt.pool_types): what it says about each type, how it refuses, and
host.info's pool capabilities read from libvirt's pool capabilities XML."""

from __future__ import annotations

from typing import get_args

import pytest

from messages.objects import VOLUME_OPERATIONS, VolumeOperation
from messages.pools import PoolType
from messages.results import ErrorCode
from messages.volumes import VolumeFormat, WipeAlgorithm
from worker.errors import OperationError
from worker.virt import pool_types
from worker.virt.describe import pool_capabilities

# virConnectGetStoragePoolCapabilities of libvirt 9.0.0, trimmed to four types.
CAPABILITIES = """<storagepoolCapabilities>
  <pool type='dir' supported='yes'>
    <volOptions>
      <defaultFormat type='raw'/>
      <enum name='targetFormatType'>
        <value>none</value><value>raw</value><value>dir</value><value>bochs</value><value>cloop</value>
        <value>dmg</value><value>iso</value><value>vpc</value><value>vdi</value><value>fat</value>
        <value>vhd</value><value>ploop</value><value>cow</value><value>qcow</value><value>qcow2</value>
        <value>qed</value><value>vmdk</value>
      </enum>
    </volOptions>
  </pool>
  <pool type='disk' supported='yes'>
    <poolOptions>
      <defaultFormat type='unknown'/>
      <enum name='sourceFormatType'><value>unknown</value><value>dos</value><value>gpt</value></enum>
    </poolOptions>
    <volOptions>
      <defaultFormat type='none'/>
      <enum name='targetFormatType'>
        <value>none</value><value>linux</value><value>fat16</value><value>fat32</value><value>linux-swap</value>
        <value>linux-lvm</value><value>linux-raid</value><value>extended</value>
      </enum>
    </volOptions>
  </pool>
  <pool type='iscsi-direct' supported='yes'>
  </pool>
  <pool type='rbd' supported='no'>
  </pool>
</storagepoolCapabilities>"""


def test_every_pool_type_of_the_contract_is_in_the_table():
    assert set(pool_types.POOL_TYPES) == set(get_args(PoolType))


def test_the_contracts_operation_names():
    assert set(VOLUME_OPERATIONS) == set(get_args(VolumeOperation))


@pytest.mark.parametrize("kind", sorted(pool_types.POOL_TYPES))
def test_operations_are_listed_in_the_contracts_order(kind):
    listed = pool_types.operations(kind)
    assert listed == [op for op in VOLUME_OPERATIONS if op in listed]
    entry = pool_types.kind_of(kind)
    assert set(listed) == entry.operations
    assert entry.lacking or entry.operations == set(VOLUME_OPERATIONS), f"{kind} lacks operations without saying why"


def test_what_was_measured_here():
    assert pool_types.operations("dir") == pool_types.operations("fs") == list(VOLUME_OPERATIONS)
    assert "resize" not in pool_types.operations("disk") and len(pool_types.operations("disk")) == 7
    assert pool_types.operations("iscsi-direct") == ["wipe", "attach"]
    assert pool_types.operations("mpath") == ["upload", "download", "wipe"], "libvirt cannot attach mpath volumes"


def test_facts_the_handlers_read():
    files = {k for k, v in pool_types.POOL_TYPES.items() if v.file_volumes}
    assert files == {"dir", "fs", "netfs", "vstorage"}
    assert {k for k, v in pool_types.POOL_TYPES.items() if v.formats_device} == {"fs", "disk", "logical"}
    assert {k for k, v in pool_types.POOL_TYPES.items() if v.partitions} == {"disk"}
    assert {k for k, v in pool_types.POOL_TYPES.items() if v.mounts} == {"fs", "netfs"}


def test_an_unknown_type_can_do_nothing():
    assert pool_types.operations("future") == []
    with pytest.raises(OperationError) as caught:
        pool_types.require("future", "create", "p")
    assert "does not know the pool type" in caught.value.message


def test_refusal_names_the_type_the_operation_and_what_can_be_done():
    pool_types.require("iscsi-direct", "wipe", "luns")
    with pytest.raises(OperationError) as caught:
        pool_types.require("iscsi-direct", "download", "luns")
    error = caught.value
    assert error.code is ErrorCode.unsupported and error.retryable is False
    assert error.message.startswith("volume.download is not supported on iscsi-direct pools (pool 'luns'): ")
    assert error.message.endswith("Volume operations this worker can run on iscsi-direct pools: wipe, attach")
    with pytest.raises(OperationError) as caught:
        pool_types.require("disk", "resize", "parts")
    assert "a partition's size is fixed in the partition table" in caught.value.message


def test_clone_sources_must_be_readable_here():
    pool_types.require_clone_source("iscsi", "p")
    pool_types.require_clone_source("dir", "p")
    with pytest.raises(OperationError) as caught:
        pool_types.require_clone_source("iscsi-direct", "luns")
    assert caught.value.message.startswith("volume.clone cannot copy a volume of iscsi-direct pool 'luns'")


@pytest.mark.parametrize("algorithm", get_args(WipeAlgorithm))
def test_wipe_algorithms(algorithm):
    pool_types.require_wipe_algorithm("dir", algorithm, "p")
    if algorithm == "zero":
        pool_types.require_wipe_algorithm("iscsi-direct", algorithm, "p")
    else:
        with pytest.raises(OperationError, match=f"algorithm '{algorithm}' is not supported on iscsi-direct"):
            pool_types.require_wipe_algorithm("iscsi-direct", algorithm, "p")


def test_lost_and_found_is_hidden_only_at_a_mounted_root():
    assert pool_types.hidden("lost+found", lambda: "fs") and pool_types.hidden("lost+found", lambda: "netfs")
    assert not pool_types.hidden("lost+found", lambda: "dir")
    assert not pool_types.hidden("lost+found2", lambda: pytest.fail("the type is asked for lost+found only"))


def test_pool_capabilities_from_libvirts_xml():
    found = pool_capabilities(CAPABILITIES)
    assert [c.type for c in found] == ["dir", "disk", "iscsi-direct"], "supported types only, by name"
    by_type = {c.type: c for c in found}
    assert by_type["dir"].volume_formats[:3] == ["none", "raw", "dir"] and len(by_type["dir"].volume_formats) == 17
    assert by_type["dir"].operations == list(VOLUME_OPERATIONS)
    assert by_type["disk"].volume_formats == ["none", "linux", "fat16", "fat32", "linux-swap", "linux-lvm",
                                              "linux-raid", "extended"]
    assert by_type["iscsi-direct"].volume_formats == [] and by_type["iscsi-direct"].operations == ["wipe", "attach"]


def test_every_format_libvirt_lists_can_be_asked_for():
    listed = {f for c in pool_capabilities(CAPABILITIES) for f in c.volume_formats}
    assert listed <= set(get_args(VolumeFormat))
