"""Mutated commands for fuzzing a running worker, from a seeded `random.Random`: the same seed gives
the same messages, so a failure names the seed that reproduces it.

A `Mutator` starts from a well-formed command aimed at resources of the test's own (a pool whose
name carries the test's prefix, volumes in it, files under its allowed root) and applies a few
mutations: field deletions and duplications, type swaps, huge numbers and absurd sizes, unicode,
path traversal, symlinks leading out of the allowed root, NUL bytes, wrong ops, deep nesting,
bodies that are no JSON or too big, and odd AMQP properties. Every name it makes that the models
would accept keeps the test's prefix, so whatever a mutated command creates is the test's to find
and remove.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from messages.command import MAX_BODY
from messages.operations import OPERATIONS

UNICODE = ["\u00e9", "\u202e", "\U0001f4a9", "\u0000", "\ufeff", "\ud7ff", "\u2028", "\uffff", "e\u0301", "\u0130"]
HUGE = [2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -1, -(2**63), 10**40, 1e308, float("inf")]
NOT_JSON = [b"", b"{", b"null", b"[]", b"\xff\xfe", b"{'id': 'x'}", b"NaN", b'{"id": "x",}', b"\x00" * 16]


@dataclass
class Message:
    """One message to publish: its body, its AMQP properties (as pika's BasicProperties takes them,
    less correlation_id and reply_to, which the sender sets), and what was done to it."""

    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    reply: bool = True  # False: sent without reply_to
    mutations: list[str] = field(default_factory=list)
    command_id: str | None = None  # the id the body carries, when it is a usable string


class Mutator:
    def __init__(self, rng: random.Random, *, prefix: str, pool: str, root: Path, outside_link: Path,
                 source_file: Path, size_cap: int = 2**63 - 1):
        """`pool`: a running dir pool of the test under `root` (the allowed root); `outside_link`: a
        symlink under `root` to a directory outside it; `source_file`: a small file under `root`.

        `size_cap`: the largest capacity a valid mutated size may ask for. Against a real libvirtd a
        clone reads its source's whole capacity, holes included: a volume of 2**62 bytes would keep
        the daemon (shared with other tests) busy for hours. Sizes above the cap that the contract
        refuses anyway (2**63 and more, negatives, floats) are sent as they are."""
        self.rng = rng
        self.size_cap = size_cap
        self.prefix = prefix
        self.pool = pool
        self.root = root
        self.outside = outside_link
        self.source = source_file
        self.volumes = [f"{prefix}v{i}.{ext}" for i, ext in enumerate(["raw", "qcow2", "raw", "img"])]

    # ---- well-formed commands ----------------------------------------------------------------

    def _volume(self) -> str:
        return self.rng.choice(self.volumes)

    def _size(self) -> int:
        return self.rng.choice([1, 512, 4096, 65536, 2**20, 3 * 2**20])

    def command_args(self, op: str) -> dict[str, Any]:
        """Arguments of `op` a control plane might send, aimed at the test's pool."""
        pool, volume, r = self.pool, self._volume(), self.rng
        if op == "pool.define":
            name = r.choice([pool, f"{self.prefix}p{r.randrange(3)}"])
            return {"name": name, "type": "dir", "target": {"path": str(self.root / name)},
                    "build": r.random() < 0.8, "start": r.random() < 0.8}
        if op in ("pool.info", "pool.refresh", "pool.start", "pool.stop", "pool.build", "pool.delete",
                  "pool.undefine"):
            return {"name": pool}
        if op == "pool.autostart":
            return {"name": pool, "enabled": r.random() < 0.5}
        if op == "pool.list":
            return r.choice([{}, {"state": "active"}, {"state": "inactive"}])
        if op == "host.info":
            return {}
        if op == "volume.create":
            args: dict[str, Any] = {"pool": pool, "name": volume, "capacity": self._size()}
            if volume.endswith(".qcow2"):
                args["format"] = "qcow2"
            return args
        if op == "volume.clone":
            return {"pool": pool, "source": self._volume(), "name": volume}
        if op == "volume.resize":
            return {"pool": pool, "name": volume, "capacity": self._size(), "shrink": r.random() < 0.3}
        if op == "volume.wipe":
            return {"pool": pool, "name": volume, "algorithm": r.choice(["zero", "random", "trim", "nnsa"])}
        if op == "volume.upload":
            return {"pool": pool, "name": volume, "source": {"path": str(self.source)}}
        if op == "volume.download":
            return {"pool": pool, "name": volume, "destination": {"path": str(self.root / f"{self.prefix}dl.raw")}}
        if op in ("volume.delete", "volume.info"):
            return {"pool": pool, "name": volume}
        if op == "volume.list":
            return {"pool": pool}
        if op == "volume.attach":
            return {"domain": f"{self.prefix}guest", "pool": pool, "name": volume, "target": "vdb"}
        if op == "volume.detach":
            return {"domain": f"{self.prefix}guest", "target": "vdb"}
        if op == "job.cancel":
            return {"id": f"{self.prefix}{r.randrange(10**6)}"}
        raise AssertionError(f"no template for {op}")

    def command(self) -> dict[str, Any]:
        op = self.rng.choice(sorted(OPERATIONS))
        return {"id": f"{self.prefix}{uuid.UUID(int=self.rng.getrandbits(128)).hex}", "op": op,
                "args": self.command_args(op)}

    # ---- mutations ---------------------------------------------------------------------------

    def message(self) -> Message:
        """A command with 0 to 3 mutations (about one in six is left well-formed)."""
        document = self.command()
        message = Message(body=b"", command_id=document["id"])
        kinds = self.rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()),
                                 k=self.rng.choice([0, 1, 1, 1, 2, 3]))
        for kind in kinds:
            if kind in _DOCUMENT_MUTATIONS:
                document = getattr(self, f"_m_{kind}")(document)
                message.mutations.append(kind)
        message.body = json.dumps(document, allow_nan=True).encode("utf-8", "surrogatepass")
        for kind in kinds:
            if kind in _BODY_MUTATIONS:
                message.body = getattr(self, f"_b_{kind}")(message.body)
                message.mutations.append(kind)
            elif kind in _PROPERTY_MUTATIONS:
                getattr(self, f"_p_{kind}")(message)
                message.mutations.append(kind)
        command_id = document.get("id") if isinstance(document, dict) else None
        message.command_id = command_id if isinstance(command_id, str) else None
        return message

    def _any_path(self, document: Any) -> list[Any]:
        """Every (container, key) in the document, args and envelope alike."""
        found = []

        def walk(node: Any) -> None:
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
            for key, value in items:
                found.append((node, key))
                walk(value)

        walk(document)
        return found

    def _pick(self, document: Any) -> tuple[Any, Any] | None:
        places = self._any_path(document)
        return self.rng.choice(places) if places else None

    def _m_delete(self, document: dict) -> dict:
        place = self._pick(document)
        if place is not None:
            container, key = place
            del container[key]
        return document

    def _m_type_swap(self, document: dict) -> dict:
        place = self._pick(document)
        if place is not None:
            container, key = place
            container[key] = self.rng.choice([None, True, 0, -1, 3.5, "", "x", [], {}, [container[key]],
                                              {"value": container[key]}, str(container[key])])
        return document

    def _capped(self, size: Any) -> Any:
        valid = isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= 2**63 - 1
        return min(size, self.size_cap) if valid else size

    def _m_huge_number(self, document: dict) -> dict:
        args = document.get("args")
        if isinstance(args, dict):
            key = self.rng.choice(["capacity", "allocation", "offset", "length", *list(args)])
            args[key] = self._capped(self.rng.choice(HUGE))
        return document

    def _m_absurd_size(self, document: dict) -> dict:
        args = document.get("args")
        if isinstance(args, dict) and document.get("op") in ("volume.create", "volume.resize", "volume.clone"):
            args["capacity"] = self._capped(self.rng.choice([2**40, 2**50, 2**62, 2**63 - 1]))
            if self.rng.random() < 0.3:
                args["allocation"] = args["capacity"]
            if self.rng.random() < 0.3:
                args["allocate"] = True
        return document

    def _m_unicode(self, document: dict) -> dict:
        strings = [(c, k) for c, k in self._any_path(document) if isinstance(c[k], str)]
        if strings:
            container, key = self.rng.choice(strings)
            text = container[key]
            at = self.rng.randrange(len(text) + 1)
            container[key] = text[:at] + self.rng.choice(UNICODE) + text[at:]
        return document

    def _m_nul(self, document: dict) -> dict:
        strings = [(c, k) for c, k in self._any_path(document) if isinstance(c[k], str)]
        if strings:
            container, key = self.rng.choice(strings)
            container[key] = container[key] + "\x00" + self.rng.choice(["", "/etc/passwd", ".raw"])
        return document

    def _m_traversal(self, document: dict) -> dict:
        args = document.get("args")
        if not isinstance(args, dict):
            return document
        escape = self.rng.choice([f"{self.root}/../../etc/passwd", f"{self.root}/./x", f"{self.root}//x",
                                  "../../etc/shadow", "/etc/passwd", f"{self.root}/../{self.root.name}x/y",
                                  "/proc/self/environ", f"{self.root}/"])
        target = self.rng.choice(["name", "pool", "source", "destination", "target"])
        if target == "source":
            args["source"] = {"path": escape}
        elif target == "destination":
            args["destination"] = {"path": escape}
        elif target == "target":
            args["target"] = {"path": escape}
        else:
            args[target] = self.rng.choice(["..", "../x", "a/../../b", escape])
        return document

    def _m_symlink(self, document: dict) -> dict:
        """Paths through a symlink under the root that leads out of it."""
        args = document.get("args")
        if not isinstance(args, dict):
            return document
        inside = str(self.outside / f"{self.prefix}escape.raw")
        choice = self.rng.choice(["upload", "download", "define"])
        if choice == "upload":
            document["op"] = "volume.upload"
            args.update({"pool": self.pool, "name": self._volume(), "source": {"path": str(self.outside / "secret")}})
        elif choice == "download":
            document["op"] = "volume.download"
            args.update({"pool": self.pool, "name": self._volume(), "destination": {"path": inside}})
            args.pop("source", None)
        else:
            name = f"{self.prefix}p{self.rng.randrange(3)}"
            document["op"] = "pool.define"
            document["args"] = {"name": name, "type": "dir", "target": {"path": str(self.outside / name)},
                                "build": True, "start": True}
        return document

    def _m_wrong_op(self, document: dict) -> dict:
        document["op"] = self.rng.choice([*sorted(OPERATIONS), "volume.explode", "", "VOLUME.CREATE", "pool.*",
                                          "host.info ", None, 7, ["pool.info"]])
        return document

    def _m_deep(self, document: dict) -> dict:
        nested: Any = 1
        for _ in range(self.rng.choice([50, 400])):  # json.dumps recurses too: deeper ones are deep_json
            nested = {"x": nested} if self.rng.random() < 0.5 else [nested]
        target = document.get("args") if isinstance(document.get("args"), dict) else document
        target[self.rng.choice(["name", "source", "extra"])] = nested
        return document

    def _m_duplicate(self, document: dict) -> dict:
        args = document.get("args")
        if isinstance(args, dict) and args:
            key = self.rng.choice(list(args))
            args[f"{key}_copy"] = args[key]
        document["extra" if self.rng.random() < 0.5 else "ID"] = document.get("id")
        return document

    def _m_bad_deadline(self, document: dict) -> dict:
        document["deadline"] = self.rng.choice(["tomorrow", "2026-13-01T00:00:00Z", "1970-01-01T00:00:00Z",
                                                "2999-01-01T00:00:00", 0, -1, "2999-01-01T00:00:00+99:00"])
        return document

    def _m_bad_id(self, document: dict) -> dict:
        document["id"] = self.rng.choice([None, 42, "", "a b", "x" * 129, "\u00e9t\u00e9", "id\n", ["x"],
                                          "../../etc"])
        return document

    def _b_not_json(self, body: bytes) -> bytes:
        return self.rng.choice([*NOT_JSON, body[: self.rng.randrange(len(body) + 1)], body + b"garbage",
                                body.replace(b'"', b"'", 1)])

    def _b_oversized(self, body: bytes) -> bytes:
        pad = self.rng.choice([MAX_BODY - len(body) + 1, MAX_BODY + 100_000])
        return body[:-1] + b', "pad": "' + b"x" * pad + b'"}' if body.endswith(b"}") else body + b" " * pad

    def _b_deep_json(self, body: bytes) -> bytes:
        depth = self.rng.choice([1_000, 100_000])
        command_id = f"{self.prefix}deep{self.rng.getrandbits(64):x}".encode()
        return b'{"id": "' + command_id + b'", "op": "host.info", "args": ' + b"[" * depth + b"]" * depth + b"}"

    def _b_duplicate_keys(self, body: bytes) -> bytes:
        return body[:-1] + b', "id": 7, "op": "host.info"}' if body.endswith(b"}") else body

    def _b_latin1(self, body: bytes) -> bytes:
        return body.decode("utf-8", "replace").encode("latin-1", "replace") + b"\xe9"

    def _p_no_reply(self, message: Message) -> None:
        message.reply = False

    def _p_odd_properties(self, message: Message) -> None:
        props = message.properties
        choice = self.rng.choice(["content_type", "content_encoding", "type", "app_id", "priority",
                                  "timestamp", "delivery_mode", "message_id"])
        if choice == "content_type":
            props["content_type"] = self.rng.choice(["text/plain", "application/xml", "", "\u00e9"])
        elif choice == "content_encoding":
            props["content_encoding"] = self.rng.choice(["gzip", "utf-16", "x" * 255])
        elif choice == "type":
            props["type"] = "x" * self.rng.choice([0, 1, 255])
        elif choice == "app_id":
            props["app_id"] = self.rng.choice(["", "\u202e", "a" * 255])
        elif choice == "priority":
            props["priority"] = self.rng.choice([0, 9, 255])
        elif choice == "timestamp":
            props["timestamp"] = self.rng.choice([0, 2**32, 2**63 - 1])
        elif choice == "delivery_mode":
            props["delivery_mode"] = 1
        else:
            props["message_id"] = self.rng.choice(["", "m" * 255, "\u00e9", b"\xff\xfe".decode("latin-1")])

    def _p_bytes_properties(self, message: Message) -> None:
        """Short strings that are not UTF-8: pika hands them to the worker as bytes."""
        key = self.rng.choice(["message_id", "content_type", "type", "app_id"])
        message.properties[key] = self.rng.choice([b"\xff", b"\xc3\x28", b"id-\xfe"])

    def _p_headers(self, message: Message) -> None:
        headers: dict[str, Any] = self.rng.choice([
            {"x-storage-worker-reason": "forged"},
            {"x-death": [{"count": 99, "reason": "rejected", "queue": "elsewhere"}]},
            {"nested": {"a": {"b": {"c": [1, -2**40, None, True, b"\x00\xff", "t"]}}}},
            {"big": "h" * 60_000},
            {"big": "h" * 130_900},  # the content header frame just under the broker's frame_max
            {"k" * 200: 1},
            {"many": list(range(2000))},
        ])
        message.properties["headers"] = headers


_DOCUMENT_MUTATIONS = ["delete", "type_swap", "huge_number", "absurd_size", "unicode", "nul", "traversal",
                       "symlink", "wrong_op", "deep", "duplicate", "bad_deadline", "bad_id"]
_BODY_MUTATIONS = ["not_json", "oversized", "deep_json", "duplicate_keys", "latin1"]
_PROPERTY_MUTATIONS = ["no_reply", "odd_properties", "bytes_properties", "headers"]
# How often each is picked: bodies of a megabyte are rare, so a run of thousands stays small.
_WEIGHTS = {**{kind: 1.0 for kind in _DOCUMENT_MUTATIONS + _BODY_MUTATIONS + _PROPERTY_MUTATIONS},
            "oversized": 0.1, "deep_json": 0.3, "headers": 0.5}
