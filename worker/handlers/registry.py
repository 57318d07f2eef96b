"""Binds handlers to the operation table: `@handles(VOLUME_CREATE)` on the function that runs it.

A handler of an executed operation is `handler(ctx: Context, args) -> result model`; the handler of
a control operation (answered on the intake thread from the worker's own state, e.g. job.cancel)
gets the worker's control context instead. Each operation has exactly one handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from messages.operations import Operation

HANDLERS: dict[str, Callable[..., Any]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def handles(operation: Operation) -> Callable[[F], F]:
    def bind(handler: F) -> F:
        bound = HANDLERS.get(operation.name)
        if bound is not None and bound is not handler:
            raise RuntimeError(f"{operation.name} has two handlers: {bound.__qualname__} and {handler.__qualname__}")
        HANDLERS[operation.name] = handler
        return handler
    return bind
