"""Hypothesis strategies for the property tests: commands and their arguments, from the contract's
models (valid-ish: mostly what the models accept) and from nowhere (any bytes, any JSON), so that both
sides of validation are exercised.

`from_schema` walks the JSON Schema pydantic makes of an args model: each string follows its field's
pattern and length, each number its bounds, each object its properties. The models' own rules
beyond the schema (what a pool type takes, allocation <= capacity, ...) are left to chance, so a
good share of what it makes is still rejected — by the model, with a message.
"""

from __future__ import annotations

import json
from datetime import timedelta, timezone
from functools import cache
from typing import Any

from hypothesis import strategies as st

from messages.operations import OPERATIONS
from messages.pools import _REQUIREMENTS, PoolDefineArgs

OPS = sorted(OPERATIONS)
# Fixed offsets: st.timezones() reads the zone database at every draw, slow enough to dominate a run.
ZONES = st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8)),
                         timezone(timedelta(hours=14))])

# Text that is hard on parsers, XML and file systems: controls, NUL, surrogates, non-characters,
# right-to-left marks, combining characters, path separators and traversal.
AWKWARD = st.sampled_from(["", " ", ".", "..", "../..", "/", "//", "\x00", "\n", "\r\n", "\t", "\x7f", "\ud800",
                           "\udfff", "\ufffe", "\uffff", "\u202e", "e\u0301", "\U0001f4a9", "&amp;", "<x/>", "]]>",
                           "'\"", "%00", "\\", "~", "*", "?", "$(id)", "a" * 300])
ANY_TEXT = st.one_of(st.text(max_size=40), AWKWARD, st.text(alphabet=st.characters(codec="utf-8"), max_size=20))
BIG_INTS = st.sampled_from([-1, 0, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1,
                            10**30, 10**4000])

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), BIG_INTS,
                    st.floats(allow_nan=True, allow_infinity=True), ANY_TEXT)


@cache
def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (NaN and Infinity included: Python's json reads and writes them)."""
    return st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(ANY_TEXT, inner, max_size=4)),
                        max_leaves=max_leaves)


@cache
def paths() -> st.SearchStrategy[str]:
    """Absolute-looking paths, some normalized, some with traversal, doubles, NULs, odd characters."""
    segment = st.one_of(st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), AWKWARD,
                        st.text(min_size=1, max_size=8))
    joined = st.lists(segment, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))
    return st.one_of(joined, st.sampled_from(["/", "/etc/passwd", "/dev/sda", "/tmp/../etc/shadow", "relative/x",
                                              "/var/lib/libvirt/images/../../../etc", "/proc/self/mem"]))


def from_schema(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Values that fit the JSON Schema pydantic made of a model (its $defs, anyOf, enums, patterns)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs))
    if "anyOf" in schema:
        return st.one_of([from_schema(option, defs) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        edges = [value for value in (low, high) if value is not None]
        return st.one_of(st.integers(low, high), st.sampled_from(edges)) if edges else st.integers()
    if kind == "string":
        return _string(schema)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs), max_size=3)
    if kind == "object":
        return _object(schema, defs)
    return json_values()


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength", 300)
    if "path" in schema.get("description", "").lower():
        return paths()
    if "pattern" in schema:
        made = st.from_regex(schema["pattern"], fullmatch=True)
    else:
        made = st.text(max_size=min(high, 40))
    return made.filter(lambda text: low <= len(text) <= high)


def _object(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties", {})
    required = set(schema.get("required", ()))
    fields = {name: from_schema(sub, defs) for name, sub in properties.items()}
    optional = sorted(set(fields) - required)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        chosen = draw(st.lists(st.sampled_from(optional), unique=True)) if optional else []
        return {name: draw(fields[name]) for name in sorted(required) + chosen}

    return build()


@cache
def model_args(op: str) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments of `op` made from its model's JSON Schema (pool.define also per pool type)."""
    made = from_schema(OPERATIONS[op].args.model_json_schema())
    if op == "pool.define":
        return st.one_of(made, pool_define_args())
    return made


_POOL_SCHEMA = PoolDefineArgs.model_json_schema()


@cache
def _pool_part(*where: str) -> st.SearchStrategy[Any]:
    """The strategy of one part of pool.define's schema, e.g. ("$defs", "PoolTarget")."""
    schema: Any = _POOL_SCHEMA
    for step in where:
        schema = schema[step]
    return from_schema(schema, _POOL_SCHEMA["$defs"])


@cache
def pool_define_args() -> st.SearchStrategy[dict[str, Any]]:
    return _pool_define_args()


@st.composite
def _pool_define_args(draw: st.DrawFn) -> dict[str, Any]:
    """pool.define arguments shaped by what each pool type takes (messages.pools' own table), with
    the values of each field drawn from the schema: most pass the model, some miss its finer rules."""
    kind = draw(st.sampled_from(sorted(_REQUIREMENTS)))
    need = _REQUIREMENTS[kind]
    document: dict[str, Any] = {"name": draw(_pool_part("properties", "name")), "type": kind}
    if need.get("target") is True or (need.get("target") == "derived" and draw(st.booleans())):
        target = draw(_pool_part("$defs", "PoolTarget"))
        if need.get("target") == "derived":
            target["path"] = draw(st.sampled_from(["/dev/vg", f"/dev/{document['name']}"]))
        document["target"] = target
    source: dict[str, Any] = {}
    for field in need["source"]:
        wanted = field in need.get("fields", ()) or (field in need.get("any_of", ()) and not source)
        if field in ("host", "device"):
            low, high = need.get(field, (0, 0))
            count = draw(st.integers(low, min(high, low + 2)))
            item = _pool_part("$defs", "PoolSource", "properties", field, "items")
            source[field] = [_device(draw, kind) if field == "device" else draw(item) for _ in range(count)]
        elif wanted or draw(st.booleans()):
            value = draw(_pool_part("$defs", "PoolSource", "properties", field))
            if field == "format" and need.get("formats"):
                value = draw(st.sampled_from(need["formats"]))
            if field == "auth" and value is not None and need.get("auth"):
                value = {**value, "type": need["auth"]}
            if field == "dir" and value is not None:
                value = draw(st.one_of(paths(), st.just(value)))
            source[field] = value
    if source or need["source"]:
        document["source"] = {k: v for k, v in source.items() if v not in (None, [])}
    for flag in ("build", "start"):
        if draw(st.booleans()):
            document[flag] = draw(st.booleans())
    return document


def _device(draw: st.DrawFn, kind: str) -> dict[str, str]:
    if kind in ("iscsi", "iscsi-direct"):
        path = draw(st.from_regex(r"iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9.-]{1,20}(:[^\x00-\x1f]{1,20})?",
                                  fullmatch=True))
    else:
        path = draw(st.one_of(st.from_regex(r"/dev/[a-z0-9/_.-]{1,20}", fullmatch=True), paths()))
    return {"path": path}


@cache
def envelopes() -> st.SearchStrategy[dict[str, Any]]:
    """Command documents: a usable id, a known (or not) op, args from the op's model (or anything)."""
    command_id = st.one_of(st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True), ANY_TEXT, st.integers())

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        op = draw(st.one_of(st.sampled_from(OPS), ANY_TEXT, st.none()))
        known = isinstance(op, str) and op in OPERATIONS
        args = draw(st.one_of(model_args(op), json_values()) if known else json_values())
        document: dict[str, Any] = {"id": draw(command_id), "op": op, "args": args}
        if draw(st.integers(0, 9)) == 0:
            document["deadline"] = draw(st.one_of(st.datetimes(timezones=ZONES).map(lambda d: d.isoformat()),
                                                  json_values(2)))
        if draw(st.integers(0, 19)) == 0:
            document[draw(ANY_TEXT)] = draw(json_values(2))
        for name in ("op", "args"):
            if draw(st.integers(0, 19)) == 0:
                document.pop(name, None)
        return document

    return build()


@cache
def bodies() -> st.SearchStrategy[bytes]:
    """Message bodies: command documents as JSON, any JSON, any bytes, truncated JSON."""
    as_json = envelopes().map(lambda document: json.dumps(document).encode())
    return st.one_of(
        as_json,
        as_json.flatmap(lambda data: st.integers(0, len(data)).map(lambda cut: data[:cut])),
        json_values().map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=200),
        st.text(max_size=100).map(lambda text: text.encode("utf-8", "surrogatepass")),
    )
