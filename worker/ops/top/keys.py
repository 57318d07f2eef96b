"""Key presses for `storage-worker top`: the terminal in cbreak mode (each key at once, no echo)
while the view runs, as it was afterwards."""

from __future__ import annotations

import os
import select
import sys
import termios
import tty
from typing import IO, Any


class Keys:
    def __init__(self, stream: IO[str] | None = None):
        self._stream = stream or sys.stdin
        self._saved: list[Any] | None = None

    def __enter__(self) -> "Keys":
        if self._stream.isatty():
            fd = self._stream.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._stream.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None

    def pressed(self) -> str:
        """The keys pressed since the last call, without waiting; "" when not on a terminal."""
        if self._saved is None:
            return ""
        fd = self._stream.fileno()
        keys = ""
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            keys += chunk.decode(errors="replace")
        return keys
