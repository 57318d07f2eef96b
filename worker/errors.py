"""The worker's one error type: what a handler raises to end a command with a contract error."""

from __future__ import annotations

from messages.results import ErrorCode, ErrorInfo, LibvirtError


class OperationError(Exception):
    """A command ends with `code` and `message`; `retryable` says whether trying again may help."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool = False,
                 libvirt: LibvirtError | None = None, reconnect: bool = False, stale_pool: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.libvirt = libvirt
        self.reconnect = reconnect
        self.stale_pool = stale_pool
        self.attempts = 0

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, retryable=self.retryable, libvirt=self.libvirt)


def invalid(message: str) -> OperationError:
    return OperationError(ErrorCode.invalid, message)


def not_found(message: str) -> OperationError:
    return OperationError(ErrorCode.not_found, message)


def conflict(message: str) -> OperationError:
    return OperationError(ErrorCode.conflict, message)


def forbidden(message: str) -> OperationError:
    return OperationError(ErrorCode.forbidden, message)


def unsupported(message: str) -> OperationError:
    return OperationError(ErrorCode.unsupported, message)


def in_use(message: str) -> OperationError:
    return OperationError(ErrorCode.in_use, message)
