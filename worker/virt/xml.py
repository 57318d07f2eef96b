"""Safe XML parsing and the small element-building helpers every libvirt XML builder uses.

The parser resolves no entities, loads no DTD and reaches no network: libvirt's XML comes from the
daemon, but a pool's or volume's name or path may hold anything a user managed to put there.
"""

from __future__ import annotations

from lxml import etree

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                          remove_blank_text=True)


def parse(text: str | bytes) -> etree._Element:
    data = text.encode() if isinstance(text, str) else text
    return etree.fromstring(data, parser=_PARSER)


def to_string(element: etree._Element) -> str:
    return etree.tostring(element, encoding="unicode")


def child(parent: etree._Element, tag: str, text: str | int | None = None, **attributes: object) -> etree._Element:
    """Append <tag attr=...>text</tag>; attributes whose value is None are left out."""
    element = etree.SubElement(parent, tag, {k: _text(v) for k, v in attributes.items() if v is not None})
    if text is not None:
        element.text = _text(text)
    return element


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def text_of(root: etree._Element, path: str) -> str | None:
    found = root.find(path)
    return found.text if found is not None and found.text is not None else None


def attr_of(root: etree._Element, path: str, name: str) -> str | None:
    found = root.find(path)
    return found.get(name) if found is not None else None


def int_of(root: etree._Element, path: str) -> int:
    value = text_of(root, path)
    return int(value) if value is not None else 0
