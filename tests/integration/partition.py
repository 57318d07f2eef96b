"""A network partition between a worker and the broker, made of real kernel parts.

    host namespace                                  worker's namespace (swp-<tag>)
    127.0.0.1:5672 (the machine's broker)
          ^
          | TcpForwarder (a thread of the test)
          |
    10.234.0.<4k+1>:<port>  ==== veth pair ====  10.234.0.<4k+2>   <- storage-worker run
                      swp<tag>h            swp<tag>n

The machine's broker listens on 127.0.0.1 only, and it is not ours to reconfigure, so the host end
of the veth pair carries a plain TCP relay to it. The worker reaches the broker only over the veth
link: `cut()` takes the host end down (the worker's end loses its carrier), and every packet of the
worker's connection is dropped silently — no RST, no FIN — so the worker finds out only by its AMQP
heartbeat, and the broker (through the relay, which forwards nothing while the link is down) by its
own. `heal()` brings the link back up.

Each partition takes a /30 of 10.234.0.0/24 not in use on this machine, so runs of the test side by
side do not meet. Namespace and links are deleted on close(), processes inside killed first.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import uuid

NET = "10.234.0"


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _addresses_in_use() -> str:
    """Every IPv4 address of the host namespace and of every named namespace."""
    out = ip("-4", "-o", "addr")
    for line in ip("netns", "list").splitlines():
        name = line.split()[0]
        try:
            out += ip("-n", name, "-4", "-o", "addr")
        except RuntimeError:  # deleted meanwhile
            continue
    return out


class Partition:
    """A namespace linked to the host by a veth pair, with a relay to the broker on the host end."""

    def __init__(self, broker: tuple[str, int] = ("127.0.0.1", 5672)):
        tag = uuid.uuid4().hex[:6]
        self.netns = f"swp-{tag}"
        self.host_link = f"swp{tag}h"
        self.netns_link = f"swp{tag}n"
        in_use = _addresses_in_use()
        free = [k for k in range(64) if f" {NET}.{4 * k + 1}/" not in in_use and f" {NET}.{4 * k + 2}/" not in in_use]
        if not free:
            raise RuntimeError(f"every /30 of {NET}.0/24 is in use")
        k = random.choice(free)
        self.host_address, self.netns_address = f"{NET}.{4 * k + 1}", f"{NET}.{4 * k + 2}"
        self._made: list[str] = []
        try:
            ip("netns", "add", self.netns)
            self._made.append("netns")
            ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.netns_link, "netns", self.netns)
            self._made.append("link")
            ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
            ip("link", "set", self.host_link, "up")
            ip("-n", self.netns, "addr", "add", f"{self.netns_address}/30", "dev", self.netns_link)
            ip("-n", self.netns, "link", "set", self.netns_link, "up")
            ip("-n", self.netns, "link", "set", "lo", "up")
            self.relay = TcpForwarder((self.host_address, 0), broker)
        except BaseException:
            self.close()
            raise

    @property
    def broker_url(self) -> str:
        """The AMQP URL under which the worker in the namespace reaches the broker (through the link)."""
        return f"amqp://guest:guest@{self.host_address}:{self.relay.port}/%2F"

    def command(self, *argv: str) -> list[str]:
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def cut(self) -> None:
        ip("link", "set", self.host_link, "down")

    def heal(self) -> None:
        ip("link", "set", self.host_link, "up")

    def http_status(self, port: int, path: str) -> int:
        """The HTTP status of GET path on 127.0.0.1:port inside the namespace (0: no answer within 3 s).
        Asked from inside: while the link is cut, the host cannot reach the namespace."""
        probe = ("import urllib.error, urllib.request\n"
                 "try:\n"
                 f"    print(urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=3).status)\n"
                 "except urllib.error.HTTPError as e:\n"
                 "    print(e.code)\n"
                 "except OSError:\n"
                 "    print(0)\n")
        done = subprocess.run(self.command(sys.executable, "-c", probe), capture_output=True, text=True, timeout=30,
                              check=False)
        return int(done.stdout.strip() or 0)

    def close(self) -> None:
        relay = getattr(self, "relay", None)
        if relay is not None:
            relay.close()
        if "netns" in self._made:
            for pid in ip("netns", "pids", self.netns).split():
                subprocess.run(["kill", "-9", pid], capture_output=True, check=False)
        if "link" in self._made:
            subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, check=False)
        if "netns" in self._made:
            ip("netns", "del", self.netns)
        self._made.clear()


class TcpForwarder:
    """Accepts TCP connections on `listen` and relays each, both ways, to `target`. When either side
    ends, both sockets of that pair are shut down."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self._target = target
        self._server = socket.create_server(listen)
        self.port = self._server.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._pairs.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, client, upstream), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, *pair: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in pair:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pairs, self._pairs = self._pairs, []
        self._server.close()
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
