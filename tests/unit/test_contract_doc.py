"""docs/contract.md is kept in step with the code: every operation, event type, error code and
setting the code has is named in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from messages.events import EventType
from messages.operations import OPERATIONS
from messages.results import ErrorCode, Status
from worker.config import Settings

CONTRACT = (Path(__file__).parents[2] / "docs" / "contract.md").read_text()


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_every_operation_is_in_the_contract(op):
    assert f"| `{op}` |" in CONTRACT, f"{op} has no row in the operations table of docs/contract.md"


@pytest.mark.parametrize("event", sorted(e.value for e in EventType))
def test_every_event_type_is_in_the_contract(event):
    assert f"`{event}`" in CONTRACT


@pytest.mark.parametrize("code", sorted(c.value for c in ErrorCode))
def test_every_error_code_is_in_the_contract(code):
    assert f"| `{code}` |" in CONTRACT, f"{code} has no row in the error codes table"


@pytest.mark.parametrize("status", sorted(s.value for s in Status))
def test_every_status_is_in_the_contract(status):
    assert f"`{status}`" in CONTRACT


@pytest.mark.parametrize("setting", sorted(name.upper() for name in Settings.model_fields))
def test_every_setting_is_in_the_contract(setting):
    assert f"`{setting}`" in CONTRACT, f"setting {setting} is missing from docs/contract.md"
