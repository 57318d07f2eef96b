"""Authorization policy (POLICY_FILE, docs/contract.md "Running the worker"): which operations, on which
pools, a broker user may run.

The policy keys on the command's AMQP `user_id`, which RabbitMQ validates against the connection's
user, so a control plane cannot claim to be someone else. The file is TOML:

    [default]            # users without a rule of their own, and commands without user_id
    ops = ["*.info", "*.list"]
    pools = ["*"]

    [users.controlplane] # keyed by the broker-validated user_id (exact, case-sensitive)
    ops = ["*"]
    pools = ["tenant-*", "images"]

    [users.monitoring]   # no `pools`: every pool
    ops = ["*.info", "*.list"]

Rules:
- Patterns are shell globs (`fnmatch.fnmatchcase`: `*`, `?`, `[abc]`; case-sensitive; `*` also
  matches dots, so `*.info` covers host.info, pool.info and volume.info).
- A user's own rule replaces the default entirely; rules are not merged.
- A rule without `pools` allows every pool; `pools = []` allows only operations that name no pool.
- Without a `[default]` section, users without a rule (and commands without user_id) may do nothing.
- An op pattern must match at least one known operation: a typo such as "volume.delet" is an
  error when the file is loaded, not a silent deny.

Which pools a command touches (all of them must be allowed): every pool its operation names (the
`uses` of its entry in the operation table, messages.operations): `name` of pool operations,
`pool`, `source_pool` and `backing.pool` of volume operations; a clone without `source_pool` reads
from `pool`, already counted. Operations that name no pool are decided by the op alone: host.info,
pool.list (it lists every pool: the policy does not filter results), volume.detach (it names a
domain and a disk target, not a pool) and job.cancel (it names a command id; the policy does not
check who sent that command).
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from messages.command import Command
from messages.errors import shown
from messages.operations import OPERATIONS
from worker.errors import forbidden

Pattern = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=255)]


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file and the problem."""


class Rule(BaseModel):
    """What one user (or the default) may do."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ops: list[Pattern] = Field(description="globs of operation names, e.g. 'volume.*', '*.info'")
    pools: list[Pattern] | None = Field(None, description="globs of pool names; absent = every pool")

    @field_validator("ops")
    @classmethod
    def _ops_match_operations(cls, ops: list[str]) -> list[str]:
        for pattern in ops:
            if not any(fnmatch.fnmatchcase(op, pattern) for op in OPERATIONS):
                raise ValueError(f"{pattern!r} matches no operation "
                                 f"(operations: {', '.join(sorted(OPERATIONS))})")
        return ops

    def allows_op(self, op: str) -> bool:
        return any(fnmatch.fnmatchcase(op, pattern) for pattern in self.ops)

    def allows_pool(self, pool: str) -> bool:
        return self.pools is None or any(fnmatch.fnmatchcase(pool, pattern) for pattern in self.pools)


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    default: Rule | None = None
    users: dict[Annotated[str, StringConstraints(min_length=1)], Rule] = {}


def pools_touched(command: Command) -> list[tuple[str, str]]:
    """(field, pool name) for every pool the command names, in field order, without repeats."""
    return OPERATIONS[command.op].pools_named(command.args)


@dataclass(frozen=True)
class Policy:
    """An authorization policy; `check` raises `forbidden` for what it does not allow."""

    default: Rule | None
    users: dict[str, Rule]
    source: str = "allow-all"
    enforcing: bool = True

    @classmethod
    def allow_all(cls) -> "Policy":
        """The policy when no POLICY_FILE is set: everything is allowed."""
        return cls(default=Rule(ops=["*"]), users={}, source="allow-all (no POLICY_FILE)", enforcing=False)

    @classmethod
    def load(cls, path: Path | str) -> "Policy":
        path = Path(path)
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
        except FileNotFoundError:
            raise PolicyError(f"policy file {str(path)!r} does not exist") from None
        except IsADirectoryError:
            raise PolicyError(f"policy file {str(path)!r} is a directory, not a file") from None
        except PermissionError:
            raise PolicyError(f"policy file {str(path)!r} cannot be read (permission denied)") from None
        except UnicodeDecodeError as exc:
            raise PolicyError(f"policy file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy file {str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_mapping(raw, source=str(path))

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], source: str = "<policy>") -> "Policy":
        try:
            document = PolicyDocument.model_validate(raw)
        except ValidationError as exc:
            raise PolicyError(f"policy file {source!r}: {_describe(exc)}") from None
        return cls(default=document.default, users=dict(document.users), source=source)

    def rule_for(self, user_id: str | None) -> Rule | None:
        if user_id is not None and user_id in self.users:
            return self.users[user_id]
        return self.default

    def check(self, user_id: str | None, command: Command) -> None:
        """Return when `user_id` may run `command`; raise worker.errors.forbidden otherwise."""
        if not self.enforcing:
            return
        who = _who(user_id, self.users)
        rule = self.rule_for(user_id)
        if rule is None:
            raise forbidden(f"{who} may not run {command.op}: the authorization policy has no rule for it "
                            f"and no [default] section, so nothing is allowed")
        if not rule.allows_op(command.op):
            allowed = ", ".join(rule.ops) or "nothing"
            raise forbidden(f"{who} may not run {command.op} (allowed: {allowed})")
        for where, pool in pools_touched(command):
            if not rule.allows_pool(pool):
                allowed = ", ".join(rule.pools or []) or "no pool"
                raise forbidden(f"{who} may not use pool {pool!r} ({where}) in {command.op} "
                                f"(allowed pools: {allowed})")

    def summary(self) -> str:
        """One line for operators, e.g. for `storage-worker doctor`."""
        if not self.enforcing:
            return "no policy: every command is allowed"
        default = "a [default] rule" if self.default is not None else "no [default] rule (deny)"
        users = ", ".join(sorted(self.users)) or "none"
        return f"{len(self.users)} user rule(s) ({users}), {default}"


def _who(user_id: str | None, users: dict[str, Rule]) -> str:
    if user_id is None:
        return "a command without user_id"
    if user_id in users:
        return f"user {user_id!r}"
    return f"user {user_id!r} (no rule of its own, default rule)"


def _describe(error: ValidationError) -> str:
    sentences = []
    for item in error.errors(include_url=False):
        where = _where(item["loc"])
        kind = item["type"]
        if kind == "missing":
            sentences.append(f"{where} is required")
        elif kind == "extra_forbidden":
            hint = ("the file takes [default] and [users.<user_id>] tables" if len(item["loc"]) == 1
                    else "a rule takes ops and pools")
            sentences.append(f"{where} is not a known key ({hint})")
        elif kind == "value_error":
            sentences.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
        elif kind in {"string_type", "list_type", "model_type", "dict_type", "model_attributes_type"}:
            expected = {"string_type": "a string", "list_type": "a list of strings",
                        "model_type": "a table", "model_attributes_type": "a table",
                        "dict_type": "a table"}[kind]
            sentences.append(f"{where} must be {expected}, got {shown(item['input'])}")
        else:
            sentences.append(f"{where}: {item['msg']} (got {shown(item['input'])})")
    return "; ".join(sentences)


def _where(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) and parts:
            parts[-1] = f"{parts[-1]}[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts) or "the file"
