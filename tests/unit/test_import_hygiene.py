"""The `messages` package is for control planes: importing it must not pull in pika or libvirt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules_after(statement: str) -> dict[str, bool]:
    code = (f"import json, sys\n{statement}\n"
            "print(json.dumps({name: name in sys.modules for name in ('pika', 'libvirt', 'libvirtmod')}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_messages_imports_neither_pika_nor_libvirt():
    loaded = modules_after("import messages, messages.schema, messages.command")
    assert loaded == {"pika": False, "libvirt": False, "libvirtmod": False}


def test_the_check_can_see_an_import():
    """The probe itself works: importing libvirt is seen."""
    assert modules_after("import libvirt")["libvirt"] is True
