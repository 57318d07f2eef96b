"""JSON Schema of the whole contract, generated from the models."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, Field, RootModel, create_model
from pydantic.json_schema import models_json_schema

from messages.events import DATA_MODELS, CloudEvent
from messages.fields import CommandId, Strict
from messages.operations import OPERATIONS
from messages.results import Result


def _camel(op: str) -> str:
    return "".join(part.capitalize() for part in op.replace("-", ".").split("."))


def _args_field(args: type[Strict]) -> tuple[Any, Any]:
    """`args` may be left out when the operation has no required argument (decode reads it as {})."""
    if any(field.is_required() for field in args.model_fields.values()):
        return (args, ...)
    return (args, Field(default_factory=args))


def command_models() -> dict[str, type[Strict]]:
    """One typed command model per operation: {id, op: <const>, args: <op's args>, deadline?}."""
    return {
        name: create_model(
            f"{_camel(name)}Command",
            __base__=Strict,
            __doc__=operation.summary,
            id=(CommandId, ...),
            op=(Literal[name], ...),  # type: ignore[valid-type]
            args=_args_field(operation.args),
            deadline=(AwareDatetime | None, None),
        )
        for name, operation in OPERATIONS.items()
    }


def _command_union() -> type[RootModel]:
    members = tuple(command_models().values())
    union = Annotated[Union[members], Field(discriminator="op")]  # type: ignore[valid-type]
    return create_model("Command", __base__=RootModel[union])  # type: ignore[valid-type]


def json_schema() -> dict[str, Any]:
    models = [(_command_union(), "validation"), (Result, "serialization"), (CloudEvent, "serialization")]
    models += [(op.result, "serialization") for op in OPERATIONS.values()]
    models += [(model, "serialization") for model in set(DATA_MODELS.values())]
    _, definitions = models_json_schema(models, ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "libvirt storage worker wire contract v1",
        "description": "Commands a control plane sends, results it receives, events monitoring consumers see. "
                       "Result payloads per operation: " + ", ".join(
                           f"{name} -> {op.result.__name__}" for name, op in OPERATIONS.items()),
        "anyOf": [{"$ref": "#/$defs/Command"}, {"$ref": "#/$defs/Result"}, {"$ref": "#/$defs/CloudEvent"}],
        **definitions,
    }
