"""Throwaway certificates and a TLS (amqps) listener on the running broker, for the TLS tests.

Certificates are made with the `openssl` command line: a CA, a server certificate for localhost
(SAN DNS:localhost, IP:127.0.0.1) and a client certificate, all signed by that CA.

The listener is added to the running RabbitMQ node with `rabbitmqctl eval`, without a restart:

    rabbit_networking:ensure_ssl()                      % starts the ssl application
    rabbit_networking:start_ssl_listener({"127.0.0.1", Port}, SslOpts, NumAcceptors)
    rabbit_networking:stop_tcp_listener({"127.0.0.1", Port})   % stops TCP and TLS listeners alike

(RabbitMQ 3.10: start_ssl_listener/3,4 and stop_tcp_listener/1 are exported.) The broker runs as
user rabbitmq, so the files it reads are copied to a directory of their own under
/var/lib/rabbitmq, named after the test process and port; a listener whose files lie there and
whose process is gone is a leftover of an interrupted run and is stopped before a new one starts.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from worker.state.journal import process_alive

BROKER_DIR = Path(os.environ.get("TEST_TLS_BROKER_DIR", "/var/lib/rabbitmq/storage-worker-tests-tls"))
BROKER_USER = os.environ.get("TEST_TLS_BROKER_USER", "rabbitmq")
LISTEN_HOST = "127.0.0.1"
_SAFE_PATH = re.compile(r"^[A-Za-z0-9/._-]+$")


# ---- certificates ------------------------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class Ca:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Ca
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cn: str


def make_ca(directory: Path, name: str, common_name: str | None = None) -> Ca:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={common_name or name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return Ca(cert=cert, key=key)


def issue(ca: Ca, directory: Path, name: str, common_name: str, *, server_names: tuple[str, ...] = (),
          client: bool = False) -> tuple[Path, Path]:
    """A certificate and key signed by `ca`; `server_names` become subjectAltNames (DNS: or IP:)."""
    cert, key, csr, ext = (directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr",
                           directory / f"{name}.ext")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={common_name}", cwd=directory)
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}"]
    if server_names:
        sans = [f"IP:{n}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+:[0-9a-fA-F:]*", n) else f"DNS:{n}"
                for n in server_names]
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    openssl("x509", "-req", "-sha256", "-days", "2", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-set_serial", str(uuid.uuid4().int >> 64), "-extfile", str(ext), "-out", str(cert), cwd=directory)
    csr.unlink()
    ext.unlink()
    return cert, key


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory, "ca", "storage-worker test CA")
    server_cert, server_key = issue(ca, directory, "server", "localhost", server_names=("localhost", "127.0.0.1"))
    client_cn = f"storage-worker-test-client-{uuid.uuid4().hex[:8]}"
    client_cert, client_key = issue(ca, directory, "client", client_cn, client=True)
    return Pki(ca=ca, server_cert=server_cert, server_key=server_key, client_cert=client_cert,
               client_key=client_key, client_cn=client_cn)


# ---- the broker ----------------------------------------------------------------------------------

def rabbitmq_eval(expression: str) -> str:
    done = subprocess.run(["rabbitmqctl", "eval", expression], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl eval {expression!r} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def _erlang_string(path: Path | str) -> str:
    text = str(path)
    if not _SAFE_PATH.match(text):
        raise ValueError(f"path {text!r} needs quoting this helper does not do")
    return f'"{text}"'


def tls_listeners() -> list[tuple[int, str]]:
    """(port, certfile) of every AMQP TLS listener of the node."""
    out = rabbitmq_eval("[{P, proplists:get_value(certfile, O, \"\")} || "
                        "{listener, N, 'amqp/ssl', _H, _Ip, P, O} <- rabbit_networking:active_listeners(), "
                        "N =:= node()].")
    return [(int(port), certfile) for port, certfile in re.findall(r'\{\s*(\d+)\s*,\s*"([^"]*)"\s*\}', out)]


def stop_listener(port: int) -> None:
    out = rabbitmq_eval(f'rabbit_networking:stop_tcp_listener({{"{LISTEN_HOST}", {int(port)}}}).')
    if out != "ok":
        raise RuntimeError(f"stopping the TLS listener on port {port}: {out}")


def _owner_pid(directory: Path) -> int | None:
    match = re.match(r"^(\d+)-", directory.name)
    return int(match.group(1)) if match else None


def remove_leftovers() -> None:
    """Stop listeners (and remove files) an interrupted test run left behind: those whose files lie
    under BROKER_DIR in a directory whose test process is gone (or whose files are gone)."""
    for port, certfile in tls_listeners():
        path = Path(certfile)
        if BROKER_DIR not in path.parents:
            continue  # not ours: never touched
        pid = _owner_pid(path.parent)
        if not path.exists() or pid is None or not process_alive(pid):
            stop_listener(port)
    if BROKER_DIR.is_dir():
        for directory in BROKER_DIR.iterdir():
            pid = _owner_pid(directory)
            if pid is None or not process_alive(pid):
                shutil.rmtree(directory, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LISTEN_HOST, 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((LISTEN_HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"nothing listens on {LISTEN_HOST}:{port} after starting the TLS listener")
            time.sleep(0.1)


class TlsListener:
    """An amqps listener on 127.0.0.1:`port` of the running broker, with the server certificate of
    `pki`; clients that offer a certificate must have one signed by the same CA (verify_peer), but
    none is required (fail_if_no_peer_cert false)."""

    def __init__(self, pki: Pki, port: int | None = None):
        self.pki = pki
        self._wanted_port = port
        self.port = 0
        self.directory: Path | None = None

    def start(self) -> "TlsListener":
        remove_leftovers()
        last_error = ""
        for _attempt in range(5):
            port = self._wanted_port or free_port()
            self._stage_files(port)
            assert self.directory is not None
            options = (f"[{{cacertfile, {_erlang_string(self.directory / 'ca.pem')}}}, "
                       f"{{certfile, {_erlang_string(self.directory / 'server.pem')}}}, "
                       f"{{keyfile, {_erlang_string(self.directory / 'server.key')}}}, "
                       "{verify, verify_peer}, {fail_if_no_peer_cert, false}]")
            out = rabbitmq_eval("_ = rabbit_networking:ensure_ssl(), "
                                f'rabbit_networking:start_ssl_listener({{"{LISTEN_HOST}", {port}}}, '
                                f"rabbit_networking:fix_ssl_options({options}), 2).")
            if out == "ok":
                self.port = port
                wait_listening(port)
                return self
            last_error = out
            self._remove_files()
            if self._wanted_port:
                break  # a fixed port that is taken: say so rather than pick another
        raise RuntimeError(f"could not start a TLS listener on the broker: {last_error}")

    def _stage_files(self, port: int) -> None:
        """Copies of the server's files where the broker's user can read them."""
        BROKER_DIR.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{port}-", dir=BROKER_DIR))
        for source, name in ((self.pki.ca.cert, "ca.pem"), (self.pki.server_cert, "server.pem"),
                             (self.pki.server_key, "server.key")):
            shutil.copyfile(source, self.directory / name)
        try:
            user = pwd.getpwnam(BROKER_USER)
        except KeyError:
            user = None
        for path in (BROKER_DIR, self.directory, *self.directory.iterdir()):
            if user is not None and os.geteuid() == 0:
                os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.directory, 0o700)
        (self.directory / "server.key").chmod(0o600)

    def _remove_files(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def stop(self) -> None:
        try:
            if self.port and any(port == self.port for port, _ in tls_listeners()):
                stop_listener(self.port)
        finally:
            self.port = 0
            self._remove_files()
            try:
                BROKER_DIR.rmdir()  # only when no other run still uses it
            except OSError:
                pass

    def url(self, user: str = "guest", password: str = "guest", host: str = "localhost") -> str:
        return f"amqps://{user}:{password}@{host}:{self.port}/%2F"


def connection_rows(*keys: str) -> list[list[str]]:
    """`rabbitmqctl list_connections <keys>` as rows of values (the header line dropped)."""
    done = subprocess.run(["rabbitmqctl", "-q", "list_connections", *keys], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl list_connections failed: {done.stderr.strip()}")
    rows = [line.split("\t") for line in done.stdout.splitlines() if line.strip()]
    return [row for row in rows if row != list(keys)]


def connection_info(connection_name: str, *keys: str) -> dict[str, str] | None:
    """Info items of the broker connection whose client named itself `connection_name`."""
    for row in connection_rows(*keys, "client_properties"):
        if f'"{connection_name}"' in row[-1]:
            return dict(zip(keys, row))
    return None
