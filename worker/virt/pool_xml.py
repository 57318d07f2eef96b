"""Storage pool XML: built from a pool.define command, and read back into the same shape so that a
re-sent define can be compared with what libvirt holds.

netfs mount options live in libvirt's fs namespace, as children of <pool> (libvirt drops
mount_opts in any other namespace without a word):

    <pool type='netfs' xmlns:fs='http://libvirt.org/schemas/storagepool/fs/1.0'>
      <source>...<protocol ver='4'/></source> ...
      <fs:mount_opts><fs:option name='sync'/></fs:mount_opts>
    </pool>
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from messages.pools import PoolDefineArgs, PoolSource
from worker.virt.xml import attr_of, child, parse, text_of, to_string


FS_NAMESPACE = "http://libvirt.org/schemas/storagepool/fs/1.0"
_FS = f"{{{FS_NAMESPACE}}}"


def build(args: PoolDefineArgs) -> str:
    nsmap = {"fs": FS_NAMESPACE} if args.mount_options else None
    root = etree.Element("pool", type=args.type, nsmap=nsmap)
    child(root, "name", args.name)
    if args.source is not None:
        _source(root, args.source)
    if args.target is not None:
        target = child(root, "target")
        child(target, "path", args.target.path)
        perms = args.target.permissions
        if perms is not None:
            element = child(target, "permissions")
            for field in ("mode", "owner", "group", "label"):
                if getattr(perms, field) is not None:
                    child(element, field, getattr(perms, field))
    elif args.type == "logical":
        # libvirt derives a logical pool's path (/dev/<vg>), but its schema wants the element.
        child(root, "target")
    if args.mount_options:
        options = etree.SubElement(root, f"{_FS}mount_opts")
        for option in args.mount_options:
            etree.SubElement(options, f"{_FS}option", name=option)
    return to_string(root)


def _source(root: etree._Element, source: PoolSource) -> None:
    element = child(root, "source")
    for host in source.host:
        child(element, "host", name=host.name, port=host.port)
    for device in source.device:
        child(element, "device", path=device.path)
    if source.dir is not None:
        child(element, "dir", path=source.dir)
    if source.adapter is not None:
        a = source.adapter
        # Not through child(): its first parameter is named "parent", like the adapter attribute.
        managed = None if a.managed is None else ("yes" if a.managed else "no")
        attributes = {"type": a.type, "name": a.name, "parent": a.parent, "wwnn": a.wwnn, "wwpn": a.wwpn,
                      "managed": managed}
        etree.SubElement(element, "adapter", {k: v for k, v in attributes.items() if v is not None})
    if source.name is not None:
        child(element, "name", source.name)
    if source.format is not None:
        child(element, "format", type=source.format)
    if source.auth is not None:
        auth = child(element, "auth", type=source.auth.type, username=source.auth.username)
        child(auth, "secret", uuid=source.auth.secret.uuid, usage=source.auth.secret.usage)
    if source.initiator is not None:
        initiator = child(element, "initiator")
        child(initiator, "iqn", name=source.initiator.iqn)
    if source.protocol_version is not None:
        child(element, "protocol", ver=source.protocol_version)


def read_spec(xml: str) -> dict[str, Any]:
    """The definition libvirt holds, in the shape of pool.define's arguments (JSON types)."""
    root = parse(xml)
    spec: dict[str, Any] = {"name": text_of(root, "name"), "type": root.get("type")}
    path = text_of(root, "target/path")
    if path is not None:
        target: dict[str, Any] = {"path": path}
        perms = root.find("target/permissions")
        if perms is not None:
            target["permissions"] = {
                tag: (int(value) if tag in ("owner", "group") else value)
                for tag in ("mode", "owner", "group", "label")
                if (value := text_of(perms, tag)) is not None
            }
        spec["target"] = target
    source = root.find("source")
    if source is not None:
        spec["source"] = _read_source(source)
    options = root.findall(f"{_FS}mount_opts/{_FS}option")
    if options:
        spec["mount_options"] = [option.get("name") for option in options]
    return spec


def _read_source(source: etree._Element) -> dict[str, Any]:
    result: dict[str, Any] = {
        "host": [{"name": h.get("name"), **({"port": int(h.get("port"))} if h.get("port") else {})}
                 for h in source.findall("host")],
        "device": [{"path": d.get("path")} for d in source.findall("device")],
    }
    for key, value in (("dir", attr_of(source, "dir", "path")), ("name", text_of(source, "name")),
                       ("format", attr_of(source, "format", "type"))):
        if value is not None:
            result[key] = value
    adapter = source.find("adapter")
    if adapter is not None:
        result["adapter"] = {k: (v == "yes" if k == "managed" else v) for k, v in adapter.attrib.items()
                             if k in ("type", "name", "parent", "wwnn", "wwpn", "managed")}
    auth = source.find("auth")
    if auth is not None:
        secret = auth.find("secret")
        result["auth"] = {"type": auth.get("type"), "username": auth.get("username"),
                          "secret": dict(secret.attrib) if secret is not None else {}}
    iqn = attr_of(source, "initiator/iqn", "name")
    if iqn is not None:
        result["initiator"] = {"iqn": iqn}
    version = attr_of(source, "protocol", "ver")
    if version is not None:
        result["protocol_version"] = version
    return result


def differences(wanted: dict[str, Any], held: dict[str, Any], where: str = "") -> list[str]:
    """Fields the command sets whose value differs from the held definition. Fields the command
    leaves out are not compared: libvirt fills in defaults of its own."""
    found = []
    for key, value in wanted.items():
        path = f"{where}.{key}" if where else key
        have = held.get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            found += differences(value, have, path)
        elif isinstance(value, list) and value == [] and have in (None, []):
            continue
        elif value != have:
            found.append(f"{path} is {have!r} on the host, the command asks for {value!r}")
    return found
