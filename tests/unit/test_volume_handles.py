"""The kept volume handles, on libvirt's in-process test driver."""

from __future__ import annotations

import libvirt
import pytest

from worker.virt.handles import VolumeHandles

VOLUME_XML = "<volume><name>{name}</name><capacity>1048576</capacity></volume>"


@pytest.fixture
def volumes(conn):
    pool = conn.storagePoolLookupByName("default-pool")
    made = [pool.createXML(VOLUME_XML.format(name=f"h{i}.img"), 0) for i in range(3)]
    yield made
    for volume in made:
        volume.delete(0)


def test_the_least_recently_used_handle_goes_first(volumes):
    handles = VolumeHandles(limit=2)
    handles.put("default-pool", "h0.img", volumes[0])
    handles.put("default-pool", "h1.img", volumes[1])
    handles.get("default-pool", "h0.img")
    handles.put("default-pool", "h2.img", volumes[2])
    assert handles.get("default-pool", "h1.img") is None
    assert handles.get("default-pool", "h0.img") is volumes[0]
    assert handles.get("default-pool", "h2.img") is volumes[2]


def test_forgetting_one_volume_or_a_whole_pool(volumes):
    handles = VolumeHandles()
    handles.put("default-pool", "h0.img", volumes[0])
    handles.put("default-pool", "h1.img", volumes[1])
    handles.put("other", "h2.img", volumes[2])
    handles.forget("default-pool", "h0.img")
    assert handles.get("default-pool", "h0.img") is None
    handles.forget("default-pool")
    assert handles.get("default-pool", "h1.img") is None
    assert handles.get("other", "h2.img") is volumes[2]


def test_a_kept_handle_names_its_volume_by_name(conn, volumes):
    """What the cache relies on: a handle reads whatever volume now has its name."""
    pool = conn.storagePoolLookupByName("default-pool")
    kept = pool.storageVolLookupByName("h0.img")
    volumes[0].delete(0)
    with pytest.raises(libvirt.libvirtError) as gone:
        kept.XMLDesc(0)
    assert gone.value.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL
    volumes[0] = pool.createXML(VOLUME_XML.format(name="h0.img").replace("1048576", "2097152"), 0)
    assert "<capacity unit='bytes'>2097152</capacity>" in kept.XMLDesc(0)
