"""Constrained field types shared by every message of the contract.

Each type rejects bad input with a message that names the rule broken; the
field name and the offending value are added by `messages.errors`.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
COMMAND_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
MAX_SIZE = 2**63 - 1
MAX_PATH = 4096
# Characters no libvirt XML can carry in a name, path or label: XML 1.0 has no place for the C0
# controls (but tab and line breaks) nor U+FFFE/U+FFFF, and libvirt's schema patterns refuse tabs
# and line breaks too (absFilePath is "(/|[a-zA-Z]:\\).+", and "." matches no line break).
# lxml refuses to build an element that holds one.
NOT_IN_XML = r"\x00-\x1f\uFFFE\uFFFF"
_NOT_IN_XML = re.compile(f"[{NOT_IN_XML}]")

ResourceName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=NAME_PATTERN),
    Field(description="Pool, volume or domain name: 1-255 chars of [A-Za-z0-9._+-], "
                      "starting with a letter or digit"),
]

# Volume names may hold ':' as well (version 2): libvirt names the LUNs of iscsi, iscsi-direct and scsi
# pools unit:0:0:1.
VOLUME_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+:-]*$"
VolumeName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=VOLUME_NAME_PATTERN),
    Field(description="Volume name: 1-255 chars of [A-Za-z0-9._+:-], starting with a letter or digit"),
]

CommandId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=COMMAND_ID_PATTERN),
    Field(description="Idempotency key: 1-128 chars of [A-Za-z0-9._:-]"),
]

Size = Annotated[int, Field(strict=True, ge=0, le=MAX_SIZE, description="Size in bytes")]
PositiveSize = Annotated[int, Field(strict=True, ge=1, le=MAX_SIZE, description="Size in bytes, at least 1")]


def normalized_absolute(value: str) -> str:
    """The path itself when it is absolute and normalized, else ValueError naming the rule."""
    if "\x00" in value:
        raise ValueError("a path must not contain a NUL character")
    found = _NOT_IN_XML.search(value)
    if found is not None:
        raise ValueError(f"a path must not contain control characters (U+0000-U+001F) or U+FFFE/U+FFFF; "
                         f"found {found.group()!r} at position {found.start()}")
    if not value.startswith("/"):
        raise ValueError("a path must be absolute (start with /)")
    if posixpath.normpath(value) != value or value.startswith("//"):
        raise ValueError(f"a path must be normalized (no '.', '..', '//' or trailing '/'); "
                         f"the normalized form is {posixpath.normpath(value)!r}")
    return value


AbsolutePath = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_PATH),
    AfterValidator(normalized_absolute),
    Field(description="Absolute, normalized filesystem path"),
]

_OCTAL_MODE = re.compile(r"^[0-7]{1,4}$")


def _octal_mode(value: str) -> str:
    if not _OCTAL_MODE.match(value):
        raise ValueError("a mode is an octal string such as '0755'")
    mode = int(value, 8)
    if mode > 0o777:
        raise ValueError("a mode holds permission bits only (at most '0777'; libvirt refuses "
                         "setuid, setgid and sticky bits)")
    # libvirt stores the number and writes it back as "0%o": keep that one spelling, so that a
    # definition read back from libvirt compares equal and equivalent commands fingerprint alike.
    return f"0{mode:o}"


OctalMode = Annotated[str, AfterValidator(_octal_mode),
                      Field(description="Octal permission string, e.g. '0755' (at most 0777); "
                                        "stored in libvirt's spelling, '0' followed by the octal digits")]


class Strict(BaseModel):
    """Base of every contract model: unknown fields are rejected, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
