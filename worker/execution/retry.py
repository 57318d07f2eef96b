"""Retrying operations that meet transient errors .

An explicit budget: at most `attempts` tries, and no new try once `max_seconds` have passed since
the first failure (so an hour-long upload that fails at its end still gets its retries). libvirt
being busy ("pool has asynchronous jobs running", "volume is still in use" by a wipe libvirtd goes on
with after a worker died) is different: it lasts as long as that other job, so it is waited out for
up to `busy_seconds` whatever the number of tries. Waits are jittered and exponential. A permanent
error is never retried. A lost libvirt connection is forgotten before the next try, which opens a
new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import libvirt
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from messages.results import ErrorCode
from worker.errors import OperationError
from worker.virt.errors import classify

T = TypeVar("T")


class _Budget:
    def __init__(self, attempts: int, max_seconds: float, busy_seconds: float):
        self.attempts = attempts
        self.max_seconds = max_seconds
        self.busy_seconds = busy_seconds
        self.first_failure: float | None = None

    def __call__(self, state: RetryCallState) -> bool:
        now = time.monotonic()
        if self.first_failure is None:
            self.first_failure = now
        # tenacity computes the wait before asking us: the next try would start after it.
        spent = now + (state.upcoming_sleep or 0.0) - self.first_failure
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, OperationError) and error.code is ErrorCode.busy:
            return spent >= self.busy_seconds
        return state.attempt_number >= self.attempts or spent >= self.max_seconds


def _retryable(error: BaseException) -> bool:
    return isinstance(error, OperationError) and error.retryable


class RetryPolicy:
    def __init__(self, attempts: int, max_seconds: float, *, busy_seconds: float | None = None,
                 min_wait: float = 0.2, max_wait: float = 10.0):
        self.attempts = attempts
        self.max_seconds = max_seconds
        self.busy_seconds = max_seconds if busy_seconds is None else busy_seconds
        self.min_wait = min_wait
        self.max_wait = max_wait

    def run(self, attempt: Callable[[], T], *, connection_alive: Callable[[], bool],
            forget_connection: Callable[[str], None], forget_pools: Callable[[], None] = lambda: None,
            on_retry: Callable[[OperationError, int], None] | None = None) -> tuple[T, int]:
        """Call `attempt` until it succeeds or the budget is spent; returns (value, tries made).
        A libvirtError is classified into an OperationError; the last error is re-raised with
        its `attempts` attribute set."""

        def one_try() -> T:
            try:
                return attempt()
            except libvirt.libvirtError as exc:
                raise classify(exc, connection_alive()) from None

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, OperationError):
                if error.reconnect:
                    forget_connection(error.message)
                if error.stale_pool:
                    forget_pools()
                if on_retry is not None:
                    on_retry(error, state.attempt_number)

        tries = 1
        # The first try runs on its own: nearly every command needs no other, and tenacity's set-up
        # costs as much as a quick command. A retryable failure is handed to tenacity as the outcome
        # of its first attempt, so that budget, waits and hooks are tenacity's from there on.
        try:
            return one_try(), tries
        except OperationError as error:
            if not _retryable(error):
                raise _final(error, tries, forget_connection) from None
            first_failure: list[OperationError] = [error]

        def counted() -> T:
            nonlocal tries
            if first_failure:
                raise first_failure.pop()
            tries += 1
            return one_try()

        retrying = Retrying(stop=_Budget(self.attempts, self.max_seconds, self.busy_seconds),
                            wait=wait_random_exponential(multiplier=self.min_wait, max=self.max_wait),
                            retry=retry_if_exception(_retryable), before_sleep=before_sleep, reraise=True)
        try:
            return retrying(counted), tries
        except OperationError as error:
            raise _final(error, tries, forget_connection) from None


def _final(error: OperationError, tries: int, forget_connection: Callable[[str], None]) -> OperationError:
    """The error a command ends with, carrying the number of tries; a lost connection is forgotten."""
    error.attempts = tries
    if error.reconnect:
        forget_connection(error.message)
    return error
