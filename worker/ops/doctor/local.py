"""The worker's local state and configuration: STATE_DIR, the journal in it, ALLOWED_ROOTS and
POLICY_FILE."""

from __future__ import annotations

import os
import shlex
import sqlite3
import tempfile
from pathlib import Path

from worker.ops.doctor.context import Context
from worker.ops.doctor.report import Check, fail, ok, skip, warn

# The journal's file name in STATE_DIR (worker.app.JOURNAL_FILE; not imported: that module pulls in
# the whole worker). tests/unit/test_doctor.py checks the two agree.
JOURNAL_FILE = "journal.sqlite3"


def check_state_dir(ctx: Context) -> Check:
    """Whether a file can be written and synced in STATE_DIR; when it (or a parent) is missing, it is
    created for the test and removed again, so the check leaves nothing behind."""
    name = "state_dir"
    state_dir = Path(ctx.settings.state_dir)
    fix = (f"create {state_dir} writable by the worker's user (mkdir -p {shlex.quote(str(state_dir))}), or set "
           f"STORAGE_WORKER_STATE_DIR to a writable directory")
    created: list[Path] = []
    try:
        if state_dir.exists() and not state_dir.is_dir():
            ctx.state_dir_ok = False
            return fail(name, f"{state_dir} exists but is not a directory", fix)
        missing = [p for p in [state_dir, *state_dir.parents] if not p.exists()]
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
        handle, probe = tempfile.mkstemp(prefix=".doctor-", dir=state_dir)
        try:
            os.write(handle, b"storage-worker doctor\n")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        ctx.state_dir_ok = False
        reason = error.strerror or str(error)
        where = error.filename or state_dir
        return fail(name, f"{state_dir} is not usable: {reason}: {where}", fix)
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass
    if created:
        return ok(name, f"{state_dir} does not exist yet and can be created (the worker creates it at start)")
    return ok(name, f"{state_dir} is writable")


def check_journal(ctx: Context) -> Check:
    name = "journal"
    path = Path(ctx.settings.state_dir) / JOURNAL_FILE
    if not ctx.state_dir_ok:
        return skip(name, "not checked: STATE_DIR is not usable")
    if not path.exists():
        return ok(name, f"no journal yet at {path} (the worker creates it at start)")
    if not path.is_file():
        return fail(name, f"{path} is not a file", f"move {path} away; the worker creates a new journal")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            commands = db.execute("SELECT count(*) FROM commands").fetchone()[0] if "commands" in tables else None
        finally:
            db.close()
    except sqlite3.Error as error:
        return fail(name, f"{path} is not a readable SQLite database: {error}",
                    f"move {path} away (the worker then starts a new journal, forgetting which command ids "
                    f"it has answered), or restore it from a backup")
    size = path.stat().st_size
    if commands is None:
        return warn(name, f"{path} is an SQLite database without the journal's tables ({', '.join(sorted(tables)) or 'none'})",
                    "make sure STATE_DIR is the worker's own directory; the worker adds its tables at start")
    return ok(name, f"{path} readable: {commands} command(s), {size / 2**20:.1f} MiB")


def check_allowed_roots(ctx: Context) -> Check:
    name = "allowed_roots"
    roots = [Path(r) for r in ctx.settings.allowed_roots]
    if not roots:
        return warn(name, "ALLOWED_ROOTS is empty: no pool target, upload source or download destination is allowed",
                    "set STORAGE_WORKER_ALLOWED_ROOTS, e.g. '[\"/var/lib/libvirt/images\"]'")
    missing = [str(r) for r in roots if not r.exists()]
    not_dirs = [str(r) for r in roots if r.exists() and not r.is_dir()]
    if missing or not_dirs:
        problems = []
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        if not_dirs:
            problems.append(f"not directories: {', '.join(not_dirs)}")
        return warn(name, "; ".join(problems),
                    f"create them (mkdir -p {' '.join(shlex.quote(m) for m in missing or not_dirs)}) or fix "
                    f"STORAGE_WORKER_ALLOWED_ROOTS")
    return ok(name, ", ".join(str(r) for r in roots))


def check_policy(ctx: Context) -> Check:
    from worker.intake.policy import Policy, PolicyError

    name = "policy"
    path = ctx.settings.policy_file
    if path is None:
        return ok(name, "no POLICY_FILE: every broker user may run every command")
    try:
        policy = Policy.load(path)
    except PolicyError as error:
        return fail(name, str(error), "fix the file, or unset STORAGE_WORKER_POLICY_FILE")
    return ok(name, f"{path}: {policy.summary()}")
