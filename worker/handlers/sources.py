"""Where volume.upload reads from: a local file under ALLOWED_ROOTS or an http(s) URL under
URL_ALLOWLIST (redirects included).

Both are checked before a byte moves. A file is opened once and the opened file checked again, so a
path swapped for a link between the check and the open is caught. A URL is read by a helper
thread into a small bounded queue, so that the handler's thread never blocks on the network for
longer than _POLL and sees a cancel at once; memory stays bounded by (_URL_QUEUE + 2) * CHUNK.
"""

from __future__ import annotations

import errno
import http.client
import os
import queue
import socket
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

from messages.results import ErrorCode
from messages.volumes import VolumeUploadArgs
from worker.config import Settings
from worker.errors import OperationError, forbidden, invalid, not_found
from worker.handlers.paths import check_local_file
from worker.handlers.procfs import fd_path
from worker.virt import streams
from worker.virt.streams import CHUNK, Item, TransferCancelled

URL_TIMEOUT = 60.0  # seconds a URL source may stay silent (connect, headers, each read)
_URL_QUEUE = 4  # chunks read ahead from a URL: memory is bounded by (_URL_QUEUE + 2) * CHUNK
_POLL = 0.05  # how often a wait for a URL chunk looks at ctx.cancel


def open_source(a: VolumeUploadArgs, settings: Settings) -> FileSource | UrlSource:
    """The upload's source, checked against ALLOWED_ROOTS or URL_ALLOWLIST before anything else."""
    if a.source.path is not None:
        return FileSource(a.source.path, settings.allowed_roots)
    url = a.source.url or ""
    allowlist = settings.url_allowlist
    if not url_allowed(url, allowlist):
        raise forbidden(f"source URL {url!r} does not start with any prefix of URL_ALLOWLIST {allowlist}"
                        if allowlist else f"source URL {url!r} is refused: URL_ALLOWLIST is empty, so URL "
                                          f"sources are turned off on this worker")
    return UrlSource(url, allowlist, a.length)


def url_allowed(url: str, prefixes: list[str]) -> bool:
    """`url` starts with one of `prefixes`. A prefix that ends inside the host part (no path) must match
    the URL's whole host and port, so that "http://images.example" allows neither
    "http://images.example.evil.org/" nor "http://images.example@evil.org/"."""
    for prefix in prefixes:
        if not prefix or not url.startswith(prefix):
            continue
        parts = urlsplit(prefix)
        if parts.path or parts.query or parts.fragment or not parts.netloc:
            return True
        if urlsplit(url).netloc.lower() == parts.netloc.lower():
            return True
    return False


class FileSource:
    """A regular file under ALLOWED_ROOTS, opened once; the opened file is checked again, so a path
    swapped for a link between the check and the open is caught."""

    def __init__(self, path: str, roots: list[str]):
        real = check_local_file(path, roots, "upload source")
        self.what = f"source file {path!r}"
        try:
            self.fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise source_error(exc, self.what) from None
        try:
            opened = fd_path(self.fd)
            if opened is not None:
                check_local_file(opened, roots, "upload source")
            info = os.fstat(self.fd)
            if not stat.S_ISREG(info.st_mode):
                raise invalid(f"{self.what} is not a regular file")
        except BaseException:
            os.close(self.fd)
            raise
        self.size = info.st_size

    def start(self, cancel: threading.Event) -> int:
        return self.size

    def items(self, length: int | None, *, sparse: bool) -> Iterator[Item]:
        return streams.file_items(self.fd, self.size if length is None else length, sparse=sparse)

    def close(self) -> None:
        os.close(self.fd)


class _AllowlistRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is followed only to a URL that the allowlist allows too."""

    def __init__(self, allowlist: list[str]):
        self.allowlist = allowlist

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        if not url_allowed(newurl, self.allowlist):
            raise forbidden(f"source URL {req.full_url!r} redirects to {newurl!r}, which does not start with "
                            f"any prefix of URL_ALLOWLIST {self.allowlist}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class UrlSource:
    """An http(s) URL read by a helper thread into a small bounded queue, so that the handler's
    thread never blocks on the network for longer than _POLL and sees a cancel at once."""

    def __init__(self, url: str, allowlist: list[str], limit: int | None):
        self.url = url
        self.what = f"source URL {url!r}"
        self._opener = urllib.request.build_opener(_AllowlistRedirects(allowlist))
        self._limit = limit  # read no further than this (the command's length), when given
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=_URL_QUEUE)
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._cancel: threading.Event | None = None

    def start(self, cancel: threading.Event) -> int | None:
        """Connect and read the headers; the body's length from Content-Length, None without one."""
        self._cancel = cancel
        self._thread = threading.Thread(target=self._read, name="upload-url-reader", daemon=True)
        self._thread.start()
        kind, value = self._next()
        assert kind == "length"
        return value  # type: ignore[return-value]

    def items(self, length: int | None, *, sparse: bool) -> Iterator[Item]:
        got = 0
        while True:
            kind, value = self._next()
            if kind == "eof":
                break
            assert isinstance(value, bytes)
            got += len(value)
            yield value
        if length is not None and got < length:
            raise OperationError(ErrorCode.unavailable, f"the {self.what} ended after {got} of the {length} "
                                                        f"bytes expected; the upload was aborted")

    def close(self) -> None:
        self._stop.set()
        sock = self._socket
        if sock is not None:  # wake a read that waits for the network
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _next(self) -> tuple[str, object]:
        while True:
            if self._cancel is not None and self._cancel.is_set():
                raise TransferCancelled()
            try:
                kind, value = self._queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            if kind == "error":
                raise _url_error(value, self.what)  # type: ignore[arg-type]
            return kind, value

    def _put(self, kind: str, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            request = urllib.request.Request(self.url, headers={"Accept-Encoding": "identity"})
            with self._opener.open(request, timeout=URL_TIMEOUT) as response:
                self._socket = _socket_of(response)
                header = response.headers.get("Content-Length")
                size = int(header) if header is not None and header.strip().isdigit() else None
                if not self._put("length", size):
                    return
                got = 0
                while not self._stop.is_set():
                    want = CHUNK if self._limit is None else min(CHUNK, self._limit - got)
                    if want <= 0:
                        break
                    buf = response.read(want)
                    if not buf:
                        break
                    got += len(buf)
                    if not self._put("data", buf):
                        return
                self._put("eof", got)
        except BaseException as exc:  # handed to the handler's thread, which raises it
            if not self._stop.is_set():
                self._put("error", exc)


def _socket_of(response: object) -> socket.socket | None:
    raw = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _url_error(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, OperationError):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        code = ErrorCode.not_found if exc.code in (404, 410) else \
            ErrorCode.invalid if 400 <= exc.code < 500 else ErrorCode.unavailable
        return OperationError(code, f"the {what} answered HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        return OperationError(ErrorCode.unavailable, f"cannot read the {what}: {exc.reason}")
    if isinstance(exc, (http.client.HTTPException, OSError)):
        return OperationError(ErrorCode.unavailable, f"reading the {what} failed: {exc!r}")
    return exc


def source_error(exc: OSError, what: str) -> OperationError:
    if exc.errno == errno.ENOENT:
        return not_found(f"{what} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OperationError(ErrorCode.forbidden, f"{what} cannot be read by the worker: {exc.strerror}")
    if exc.errno == errno.ELOOP:
        return invalid(f"{what} is a symbolic link that changed while it was checked")
    return OperationError(ErrorCode.unavailable, f"reading {what} failed: {exc.strerror or exc}")
