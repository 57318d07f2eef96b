"""`storage-worker doctor` (docs/contract.md, "Settings"): checks broker, libvirt, state dir; says
what to fix.

Each check is a small function of a `Context` that returns one `Check`: a name, a status (ok, warn,
fail, or skip when what it needs failed earlier), a sentence, and for warn/fail a fix. The checks
read or create only throwaway things: broker objects named `<prefix>.doctor-<random>` (deleted
again), a temporary file in STATE_DIR (and STATE_DIR itself when it is missing, removed again).
Existing exchanges and queues are re-declared with the arguments the worker would use, which the
broker treats as a no-op when they match and refuses with 406 PRECONDITION_FAILED when they do not.

The AMQP password is never printed: URLs are shown masked and error texts are scrubbed.

The checks live in one module per subject (broker, permissions, exchanges, queues, quorum, libvirtd,
local);
this module lists them in the order they run (later checks use what earlier ones opened) and prints
the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from worker.ops.doctor.broker import check_broker
from worker.ops.doctor.context import Context
from worker.ops.doctor.exchanges import check_exchanges
from worker.ops.doctor.libvirtd import check_libvirt, check_pool_types
from worker.ops.doctor.local import check_allowed_roots, check_journal, check_policy, check_state_dir
from worker.ops.doctor.masking import scrub, url_secrets
from worker.ops.doctor.permissions import check_permissions
from worker.ops.doctor.queues import check_command_queue, check_dead_queue, check_event_stream
from worker.ops.doctor.quorum import check_quorum_members
from worker.ops.doctor.report import Check, exit_code, fail, format_json, format_report

CHECKS: list[Callable[[Context], Check]] = [
    check_broker, check_permissions, check_exchanges, check_command_queue, check_quorum_members, check_dead_queue,
    check_event_stream,
    check_libvirt, check_pool_types, check_state_dir, check_journal, check_allowed_roots, check_policy,
]


def run_checks(settings: Any, checks: list[Callable[[Context], Check]] | None = None) -> list[Check]:
    ctx = Context(settings=settings)
    ctx.secrets.extend(url_secrets(ctx.url))
    results: list[Check] = []
    try:
        for check in checks or CHECKS:
            try:
                results.append(check(ctx))
            except Exception as error:  # noqa: BLE001 - a broken check must not hide the others
                name = check.__name__.removeprefix("check_")
                results.append(fail(name, ctx.clean(f"the check itself failed: {type(error).__name__}: {error}")))
    finally:
        ctx.close()
    return results


def load_checked_settings(flags: dict[str, Any], config_file: str | None) -> tuple[Any, Check | None]:
    """The settings, or a failed 'settings' check saying what is wrong with them."""
    from pydantic import ValidationError

    from messages.errors import describe
    from worker.config import load_settings

    try:
        return load_settings(flags, config_file), None
    except FileNotFoundError as error:
        return None, fail("settings", str(error), "give an existing file to --config or STORAGE_WORKER_CONFIG")
    except ValidationError as error:
        urls = [(flags or {}).get("amqp_url"), os.environ.get("STORAGE_WORKER_AMQP_URL")]
        text = scrub(describe(error), [s for url in urls if isinstance(url, str) for s in url_secrets(url)])
        return None, fail("settings", text, "fix the flag, STORAGE_WORKER_* variable or config file entry named")
    except (OSError, ValueError) as error:
        return None, fail("settings", str(error), "fix the config file")


def doctor(flags: dict[str, Any], config_file: str | None, as_json: bool = False, out=None) -> int:
    """Run every check, print the report, return the exit code (0: nothing failed)."""
    import sys

    out = out or sys.stdout
    settings, problem = load_checked_settings(flags, config_file)
    checks = [problem] if problem is not None else run_checks(settings)
    text = format_json(checks) if as_json else format_report(checks)
    try:
        text.encode(getattr(out, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = text.replace("→", "->")
    print(text, file=out, flush=True)
    return exit_code(checks)
