"""Property tests of the XML builders (worker/virt/pool_xml.py, volume_xml.py, disk_xml.py): for
every command the contract's models accept, the XML built from it is valid against libvirt's own
RelaxNG schema (/usr/share/libvirt/schemas), building never raises, and reading the XML back gives
what the command asked for. What the models refuse never reaches a builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from lxml import etree
from pydantic import BaseModel, ValidationError

from messages.pools import PoolDefineArgs, PoolTarget
from messages.volumes import VolumeAttachArgs, VolumeCreateArgs, VolumeFormat
from tests.conftest import require
from tests.strategies import model_args, paths, pool_define_args
from worker.virt import disk_xml, pool_xml, volume_xml

SCHEMAS = Path("/usr/share/libvirt/schemas")
# A <disk> alone is no document of libvirt's: it is checked inside the smallest domain domain.rng takes.
DOMAIN = ("<domain type='qemu'><name>g</name><memory>65536</memory>"
          "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")


@pytest.fixture(scope="module")
def schemas() -> dict[str, etree.RelaxNG]:
    require((SCHEMAS / "storagepool.rng").exists(), f"libvirt's RelaxNG schemas are not installed ({SCHEMAS})")
    return {name: etree.RelaxNG(file=str(SCHEMAS / f"{name}.rng")) for name in ("storagepool", "storagevol", "domain")}


def accepted(model: type[BaseModel], document: Any) -> Any:
    """The model made of `document`; examples the model refuses are not this test's business."""
    try:
        return model.model_validate(document)
    except ValidationError:
        assume(False)


def valid(schema: etree.RelaxNG, xml: str) -> etree._Element:
    root = etree.fromstring(xml.encode())
    assert schema.validate(root), f"libvirt's schema refuses\n{xml}\n{schema.error_log}"
    return root


@given(pool_define_args())
@example({"name": "p", "type": "dir", "target": {"path": "/srv/p\u00e9\U0001f4a9"}})
@example({"name": "p", "type": "dir", "target": {"path": "/srv/\ufffe"}})
@example({"name": "p", "type": "zfs", "source": {"name": "tank\ud800"}})
@example({"name": "p", "type": "rbd", "source": {"host": [{"name": "mon"}], "name": "\uffff"}})
@example({"name": "p", "type": "gluster", "source": {"host": [{"name": "1:2::3:4:5:6:7"}], "name": "gv"}})
@example({"name": "p", "type": "rbd", "source": {"host": [{"name": "::"}, {"name": "1::"}, {"name": "fe80::1"}],
                                                 "name": "r"}})
def test_pool_xml_of_an_accepted_define_is_valid_and_reads_back(schemas, document):
    args = accepted(PoolDefineArgs, document)
    xml = pool_xml.build(args)
    valid(schemas["storagepool"], xml)
    wanted = args.model_dump(mode="json", exclude_none=True, exclude={"build", "start", "autostart"})
    assert pool_xml.differences(wanted, pool_xml.read_spec(xml)) == []


def pool_targets() -> st.SearchStrategy[str]:
    """Target paths pool.define accepts: where libvirt puts a dir pool's volumes."""
    def accepted_path(path: str) -> bool:
        try:
            return PoolTarget.model_validate({"path": path}).path == path
        except ValidationError:
            return False
    segment = st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="/\ufffe\uffff"),
                      min_size=1, max_size=10).filter(lambda name: name not in (".", ".."))
    made = st.lists(segment, min_size=1, max_size=4).map(lambda names: "/" + "/".join(names))
    return st.one_of(made, paths()).filter(accepted_path)


@given(model_args("volume.create"), pool_targets(), st.sampled_from([None, "raw", "qcow2"]))
@example({"pool": "p", "name": "a\u2028b", "capacity": 1}, "/srv/b", None)
def test_volume_xml_of_an_accepted_create_is_valid_and_reads_back(schemas, document, target, backing_format):
    args = accepted(VolumeCreateArgs, document)
    fmt = args.format or "raw"  # what the handler asks of a file pool
    # The backing path is libvirt's: the backing volume's pool target and its name.
    backing = f"{target.rstrip('/')}/{args.backing.name}" if args.backing is not None else None
    xml = volume_xml.build(args.name, args.capacity, allocation=args.allocation, format=fmt,
                           backing_path=backing, backing_format=backing_format if backing else None)
    valid(schemas["storagevol"], xml)
    read = volume_xml.read(args.pool, xml)
    assert (read.name, read.capacity, read.allocation, read.format) == (args.name, args.capacity, args.allocation, fmt)
    assert volume_xml.backing_of(xml) == ((backing, backing_format) if backing else (None, None))


@given(model_args("volume.attach"), st.sampled_from([None, *VolumeFormat.__args__]))
def test_disk_xml_of_an_accepted_attach_is_valid_and_reads_back(schemas, document, volume_format):
    args = accepted(VolumeAttachArgs, document)
    bus = args.bus or disk_xml.default_bus(args.target)
    xml = disk_xml.build(pool=args.pool, volume=args.name, target=args.target, bus=bus,
                         driver=disk_xml.driver_type(volume_format), readonly=args.readonly)
    domain = etree.fromstring(DOMAIN)
    domain.find("devices").append(etree.fromstring(xml))
    schema = schemas["domain"]
    assert schema.validate(domain), f"libvirt's schema refuses\n{xml}\n{schema.error_log}"
    disk = disk_xml.find(etree.tostring(domain, encoding="unicode"), args.target)
    assert (disk.pool, disk.volume, disk.bus, disk.readonly) == (args.pool, args.name, bus, args.readonly)
