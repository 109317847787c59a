"""The load generator: plain non-blocking sockets on one epoll loop per process.

It is deliberately not built on trio (or on triochat's client): it has to be
much cheaper per line than the servers it measures. Each worker process owns a
share of the clients and runs the scenario's phases on them, in step with the
other workers through a :class:`multiprocessing.Barrier`. Every client counts
the newlines it receives, so a server that drops lines shows up as missing
lines instead of looking fast. Every loop here is bounded by a deadline.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RECV_SIZE = 256 * 1024
_TS_RE = re.compile(rb"@(\d+\.\d+)@")
_LINGER_RST = struct.pack("ii", 1, 0)

TRIOCHAT = "triochat"
NCAT = "ncat"


class LoadError(RuntimeError):
    """A phase could not finish in time (the server is stuck, or refused clients)."""


def now() -> float:
    # CLOCK_MONOTONIC is system-wide on Linux, so times compare across processes.
    return time.monotonic()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(eq=False)
class Client:
    index: int
    name: str
    sock: socket.socket
    connected: bool = False
    registered: bool = False
    newlines: int = 0
    out: bytes = b""
    out_pos: int = 0
    expected: int = 0
    done_at: float = 0.0
    tail: bytes = b""  # unparsed end of the last chunk (probes and marker search)
    probe: bool = False
    latencies: list[float] = field(default_factory=list)
    marker_at: float = 0.0


class Engine:
    """The clients of one worker and the epoll loop that drives them."""

    def __init__(self, kind: str, port: int) -> None:
        self.kind = kind
        self.port = port
        self.epoll = select.epoll()
        self.clients: dict[int, Client] = {}
        self.marker = b""
        self.registered = 0
        self.lines = 0

    # --- connecting and registering ----------------------------------------------

    def connect(self, indices: list[int], *, inflight: int, deadline: float) -> None:
        """Connect and register every client, at most ``inflight`` at a time."""
        pending = list(reversed(indices))
        waiting = 0
        while pending or waiting:
            while pending and waiting < inflight:
                self._open(pending.pop())
                waiting += 1
            before = self.registered
            self.poll(min(0.05, max(0.0, deadline - now())))
            waiting -= self.registered - before
            if now() > deadline:
                raise LoadError(f"{waiting + len(pending)} clients not registered by the deadline")

    def _open(self, index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Close with RST: thousands of TIME_WAIT sockets would exhaust local ports.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            raise LoadError(f"connect failed: {os.strerror(code)}")
        client = Client(index, f"u{index}", sock)
        self.clients[sock.fileno()] = client
        self.epoll.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN)

    def _on_connected(self, client: Client) -> None:
        client.connected = True
        code = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise LoadError(f"connect failed: {os.strerror(code)}")
        if self.kind == TRIOCHAT:
            client.sock.send(f"{client.name}\n".encode())
            client.tail = b""
        self.epoll.modify(client.sock.fileno(), select.EPOLLIN)

    def _registration_seen(self, client: Client, data: bytes) -> bool:
        # triochat: our own join notice; ncat: its welcome announcement.
        needle = (
            f"* {client.name} joined #lobby\n".encode()
            if self.kind == TRIOCHAT
            else b"already connected"
        )
        window = client.tail + data
        if needle in window:
            client.tail = b""
            return True
        client.tail = window[-len(needle) :]
        return False

    # --- the loop ------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        for fd, events in self.epoll.poll(timeout):
            client = self.clients[fd]
            if not client.connected:
                self._on_connected(client)
            if events & select.EPOLLOUT and client.out_pos < len(client.out):
                self._flush(client)
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self._read(client)

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except ConnectionError as exc:
            raise LoadError(f"{client.name}: {exc}") from None
        if not data:
            raise LoadError(f"{client.name}: the server closed the connection")
        lines = data.count(b"\n")
        client.newlines += lines
        self.lines += lines
        if not client.registered:
            client.registered = self._registration_seen(client, data)
            if client.registered:
                self.registered += 1
            return
        if client.probe:
            chunk = client.tail + data
            cut = chunk.rfind(b"\n") + 1
            client.tail = chunk[cut:]
            if cut:
                arrived = now()
                client.latencies.extend(arrived - float(ts) for ts in _TS_RE.findall(chunk, 0, cut))
        if self.marker and not client.marker_at:
            window = client.tail + data
            if self.marker in window:
                client.marker_at = now()
            else:
                client.tail = window[-len(self.marker) :]
        if client.expected and not client.done_at and client.newlines >= client.expected:
            client.done_at = now()

    def _flush(self, client: Client) -> None:
        try:
            sent = client.sock.send(memoryview(client.out)[client.out_pos :])
        except BlockingIOError:
            sent = 0
        client.out_pos += sent
        fd = client.sock.fileno()
        if client.out_pos < len(client.out):
            self.epoll.modify(fd, select.EPOLLIN | select.EPOLLOUT)
        else:
            client.out, client.out_pos = b"", 0
            self.epoll.modify(fd, select.EPOLLIN)

    def send(self, client: Client, data: bytes) -> None:
        """Queue ``data`` and write what the socket takes now."""
        if client.out_pos < len(client.out):
            client.out = client.out[client.out_pos :] + data
        else:
            client.out = data
        client.out_pos = 0
        self._flush(client)

    def run_until(self, done: Callable[[], bool], deadline: float, step: float = 0.05) -> bool:
        while not done():
            remaining = deadline - now()
            if remaining <= 0:
                return False
            self.poll(min(step, remaining))
        return True

    def drain_quiet(self, quiet: float, deadline: float) -> None:
        """Read until nothing has arrived for ``quiet`` seconds."""
        last = now()
        while now() - last < quiet and now() < deadline:
            before = self.lines
            self.poll(0.02)
            if self.lines != before:
                last = now()

    def close(self) -> None:
        for client in self.clients.values():
            client.sock.close()
        self.epoll.close()


# --- scenarios, run in each worker process ------------------------------------------


@dataclass
class WorkerArgs:
    kind: str
    port: int
    index: int
    workers: int
    params: dict[str, Any]


def _inflight(args: WorkerArgs) -> int:
    """This worker's share of the connections being set up at once."""
    return max(1, args.params["inflight"] // args.workers)


def _mine(args: WorkerArgs, total: int) -> list[int]:
    return [i for i in range(total) if i % args.workers == args.index]


def fanout(args: WorkerArgs, barrier: Any) -> dict[str, Any]:
    """N receivers and S senders in one room; each sender sends M lines at full speed."""
    p = args.params
    n, s, m, size = p["receivers"], p["senders"], p["lines"], p["line_bytes"]
    engine = Engine(args.kind, args.port)
    try:
        engine.connect(_mine(args, n + s), inflight=_inflight(args), deadline=now() + p["timeout"])
        barrier.wait()
        engine.drain_quiet(0.3, now() + p["timeout"])
        for client in engine.clients.values():
            client.newlines = 0
            sender = client.index < s
            own = m if sender and args.kind == NCAT else 0  # ncat does not echo
            client.expected = s * m - own
        barrier.wait()
        start, cpu = now(), cpu_seconds()
        for client in engine.clients.values():
            if client.index < s:
                engine.send(client, _fanout_payload(client.index, m, size))
        clients = list(engine.clients.values())
        engine.run_until(lambda: all(c.done_at for c in clients), start + p["timeout"])
        end, cpu = now(), cpu_seconds() - cpu
        receivers = [c for c in clients if c.index >= s]
        result = {
            "start": start,
            "done": max((c.done_at or end) for c in receivers) if receivers else start,
            "cpu": cpu,
            "wall": end - start,
            "missing": sum(max(0, c.expected - c.newlines) for c in clients),
            "delivered": sum(min(c.newlines, c.expected) for c in receivers),
        }
        barrier.wait()
        return result
    finally:
        engine.close()


def _fanout_payload(sender: int, lines: int, size: int) -> bytes:
    out = []
    for seq in range(lines):
        head = f"s{sender}:{seq:06d} "
        out.append(head + "x" * (size - len(head) - 1) + "\n")
    return "".join(out).encode()


def latency(args: WorkerArgs, barrier: Any) -> dict[str, Any]:
    """``clients`` clients send ``rate`` lines/s in total for ``duration`` s; probes time them."""
    p = args.params
    total, rate, duration = p["clients"], p["rate"], p["duration"]
    engine = Engine(args.kind, args.port)
    try:
        mine = _mine(args, total)
        engine.connect(mine, inflight=_inflight(args), deadline=now() + p["timeout"])
        barrier.wait()
        engine.drain_quiet(0.3, now() + p["timeout"])
        count = int(rate * duration)
        sends = {i: len(range(i, count, total)) for i in range(total)}
        for client in engine.clients.values():
            client.newlines = 0
            client.tail = b""
            client.probe = client.index % p["probe_every"] == 0
            own = sends[client.index] if args.kind == NCAT else 0
            client.expected = count - own
        by_index = {c.index: c for c in engine.clients.values()}
        schedule = [j for j in range(count) if j % total in by_index]
        pad = "x" * max(0, p["line_bytes"] - 22)
        barrier.wait()
        start, cpu = now(), cpu_seconds()
        lag = 0.0
        for j in schedule:
            due = start + j / rate
            while True:
                remaining = due - now()
                if remaining <= 0:
                    break
                engine.poll(min(remaining, 0.05))
            sent_at = now()
            lag = max(lag, sent_at - due)
            engine.send(by_index[j % total], f"@{sent_at:.6f}@ {pad}\n".encode())
        clients = list(engine.clients.values())
        engine.run_until(lambda: all(c.done_at for c in clients), now() + p["drain"])
        end, cpu = now(), cpu_seconds() - cpu
        result = {
            "start": start,
            "cpu": cpu,
            "wall": end - start,
            "lag": lag,
            "missing": sum(max(0, c.expected - c.newlines) for c in clients),
            "latencies": [x for c in clients for x in c.latencies],
        }
        barrier.wait()
        return result
    finally:
        engine.close()


def scale(args: WorkerArgs, barrier: Any) -> dict[str, Any]:
    """``clients`` idle registered clients; then one broadcast line must reach them all."""
    p = args.params
    total = p["clients"]
    engine = Engine(args.kind, args.port)
    try:
        barrier.wait()  # the parent has measured the server's memory at rest
        start, cpu = now(), cpu_seconds()
        engine.connect(_mine(args, total), inflight=_inflight(args), deadline=start + p["timeout"])
        registered = now()
        barrier.wait()
        engine.drain_quiet(0.5, now() + p["timeout"])
        cpu = cpu_seconds() - cpu
        barrier.wait()  # all quiet: the parent measures memory again
        marker = b"BROADCAST-7f3a"
        engine.marker = marker
        for client in engine.clients.values():
            client.tail = b""
            client.marker_at = 0.0
        sender = next((c for c in engine.clients.values() if c.index == 0), None)
        barrier.wait()
        sent_at = 0.0
        if sender is not None:
            sent_at = now()
            engine.send(sender, marker + b"\n")
        others = [c for c in engine.clients.values() if c.index != 0]
        engine.run_until(lambda: all(c.marker_at for c in others), now() + p["timeout"])
        result = {
            "start": start,
            "registered": registered,
            "cpu": cpu,
            "sent_at": sent_at,
            "reached": max((c.marker_at for c in others), default=0.0),
            "unreached": sum(not c.marker_at for c in others),
        }
        barrier.wait()
        return result
    finally:
        engine.close()


SCENARIOS: dict[str, Callable[[WorkerArgs, Any], dict[str, Any]]] = {
    "fanout": fanout,
    "latency": latency,
    "scale": scale,
}


def worker_main(scenario: str, args: WorkerArgs, barrier: Any, results: Any) -> None:
    """Entry point of a worker process: run one scenario, put its result (or error)."""
    try:
        results.put((args.index, SCENARIOS[scenario](args, barrier)))
    except Exception as exc:
        barrier.abort()
        results.put((args.index, {"error": f"{type(exc).__name__}: {exc}"}))
