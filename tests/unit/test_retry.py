"""worker.execution.retry.RetryPolicy: what is retried, how often, for how long, and what the caller learns."""

from __future__ import annotations

import random
import time

import libvirt
import pytest

from messages.results import ErrorCode
from worker.errors import OperationError
from worker.execution.retry import RetryPolicy

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # keep libvirt from printing to stderr


def fast(attempts: int = 5, max_seconds: float = 10.0, wait: float = 0.001) -> RetryPolicy:
    return RetryPolicy(attempts, max_seconds, min_wait=wait, max_wait=wait)


def busy() -> OperationError:
    return OperationError(ErrorCode.busy, "pool has asynchronous jobs running", retryable=True)


def transient() -> OperationError:
    return OperationError(ErrorCode.timeout, "operation timed out", retryable=True)


class Script:
    """An attempt that raises the given errors in turn, then returns `value`."""

    def __init__(self, *errors: BaseException, value: object = "done"):
        self.errors = list(errors)
        self.value = value
        self.calls: list[float] = []

    def __call__(self) -> object:
        self.calls.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return self.value


class Connection:
    def __init__(self) -> None:
        self.alive = True
        self.forgotten: list[str] = []

    def forget(self, why: str) -> None:
        self.forgotten.append(why)
        self.alive = True  # the next try opens a new connection


def run(policy: RetryPolicy, attempt, conn: Connection | None = None, **kw):
    conn = conn or Connection()
    return policy.run(attempt, connection_alive=lambda: conn.alive, forget_connection=conn.forget, **kw)


@pytest.fixture(scope="module")
def real_libvirt_error() -> libvirt.libvirtError:
    conn = libvirt.open("test:///default")
    try:
        conn.storagePoolLookupByName("nope")
    except libvirt.libvirtError as error:
        return error
    finally:
        conn.close()
    pytest.fail("looking up a missing pool did not fail")


def test_success_first_time_returns_the_value_and_one_try():
    assert run(fast(), Script(value=42)) == (42, 1)


def test_transient_errors_are_retried_and_the_tries_counted():
    attempt = Script(busy(), busy(), value="ok")
    retried: list[tuple[ErrorCode, int]] = []
    value, tries = run(fast(), attempt, on_retry=lambda error, n: retried.append((error.code, n)))
    assert (value, tries) == ("ok", 3)
    assert len(attempt.calls) == 3
    assert retried == [(ErrorCode.busy, 1), (ErrorCode.busy, 2)]


def test_a_permanent_error_is_raised_after_one_try():
    attempt = Script(OperationError(ErrorCode.not_found, "no pool"), value="never")
    with pytest.raises(OperationError) as caught:
        run(fast(), attempt)
    assert caught.value.code == ErrorCode.not_found
    assert caught.value.attempts == 1
    assert len(attempt.calls) == 1


def test_other_exceptions_are_not_retried():
    attempt = Script(ValueError("a bug"))
    with pytest.raises(ValueError):
        run(fast(), attempt)
    assert len(attempt.calls) == 1


def test_attempts_are_capped_and_reported_on_the_last_error():
    attempt = Script(*[transient() for _ in range(10)])
    with pytest.raises(OperationError) as caught:
        run(fast(attempts=3), attempt)
    assert caught.value.code == ErrorCode.timeout
    assert caught.value.attempts == 3
    assert len(attempt.calls) == 3


def test_busy_is_waited_out_past_the_attempt_cap_within_its_own_time_budget(clock):
    """libvirt busy with another job (a wipe libvirtd finishes after the worker died) lasts as long
    as that job: the number of tries does not matter, the busy budget does."""
    attempt = Script(*[busy() for _ in range(100)])
    with pytest.raises(OperationError) as caught:
        run(RetryPolicy(3, 10, busy_seconds=40, min_wait=4, max_wait=4), attempt)
    assert caught.value.code == ErrorCode.busy
    assert [t - attempt.calls[0] for t in attempt.calls] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]


@pytest.fixture
def clock(monkeypatch):
    """A fake monotonic clock that sleeping advances: time budgets tested exactly and instantly."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    monkeypatch.setattr(time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    # Deterministic waits: always the top of tenacity's jitter window.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    return now


def test_the_time_budget_counts_from_the_first_failure_not_the_start(clock):
    """A long first try (an hour-long upload failing at its end) still gets its retries."""
    def slow_then_fine(state={"n": 0}):
        state["n"] += 1
        if state["n"] == 1:
            clock[0] += 3600  # the first try alone is far longer than the budget
            raise busy()
        return "ok"

    assert run(fast(max_seconds=60, wait=1), slow_then_fine) == ("ok", 2)


def test_no_try_starts_after_the_time_budget(clock):
    attempt = Script(*[transient() for _ in range(100)])
    with pytest.raises(OperationError) as caught:
        run(RetryPolicy(100, 10, min_wait=4, max_wait=4), attempt)
    # Tries at 0, 4, 8 s after the first failure; one at 12 s would be past the 10 s budget.
    assert [t - attempt.calls[0] for t in attempt.calls] == [0, 4, 8]
    assert caught.value.attempts == 3


def test_waits_grow_exponentially_up_to_max_wait(clock):
    attempt = Script(*[busy() for _ in range(6)], value="ok")
    assert run(RetryPolicy(10, 1000, min_wait=1, max_wait=5), attempt) == ("ok", 7)
    gaps = [b - a for a, b in zip(attempt.calls, attempt.calls[1:])]
    assert gaps == [1, 2, 4, 5, 5, 5]


def test_a_libvirt_error_is_classified(real_libvirt_error):
    def attempt():
        raise real_libvirt_error

    with pytest.raises(OperationError) as caught:
        run(fast(), attempt)
    error = caught.value
    assert error.code == ErrorCode.not_found
    assert error.retryable is False and error.attempts == 1
    assert error.libvirt is not None and error.libvirt.code == libvirt.VIR_ERR_NO_STORAGE_POOL
    assert "nope" in error.message


def test_a_libvirt_error_on_a_dead_connection_reconnects_and_retries(real_libvirt_error):
    conn = Connection()
    seen_alive: list[bool] = []

    def attempt():
        seen_alive.append(conn.alive)
        if len(seen_alive) == 1:
            conn.alive = False  # libvirtd went away during the call
            raise real_libvirt_error
        return "ok"

    assert run(fast(), attempt, conn) == ("ok", 2)
    assert len(conn.forgotten) == 1
    assert seen_alive == [True, True]  # the second try ran on a fresh connection


def test_forget_connection_runs_before_the_next_try():
    conn = Connection()
    order: list[str] = []
    lost = OperationError(ErrorCode.unavailable, "lost the connection", retryable=True, reconnect=True)

    def attempt():
        order.append("try")
        if len(order) == 1:
            raise lost
        return "ok"

    conn.forget = lambda why: order.append(f"forget: {why}")
    assert run(fast(), attempt, conn) == ("ok", 2)
    assert order == ["try", "forget: lost the connection", "try"]


def test_busy_errors_do_not_drop_the_connection():
    conn = Connection()
    run(fast(), Script(busy(), value=1), conn)
    assert conn.forgotten == []


def test_a_lost_connection_is_forgotten_when_retries_run_out():
    conn = Connection()
    lost = [OperationError(ErrorCode.unavailable, "gone", retryable=True, reconnect=True) for _ in range(2)]
    with pytest.raises(OperationError) as caught:
        run(fast(attempts=2), Script(*lost), conn)
    assert caught.value.attempts == 2
    assert len(conn.forgotten) == 2  # before the second try, and after the last
