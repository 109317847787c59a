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
TRIOCHAT_IRC = "triochat-irc"  # triochat's IRC door
NGIRCD = "ngircd"
TRIOCHAT_WEB = "triochat-web"  # every client on the web door (benchmarks/memory.py --door web)
TRIOCHAT_MIXED = "triochat-mixed"  # receivers on the line, IRC and web doors in turn
IRC_KINDS = (TRIOCHAT_IRC, NGIRCD)
# ngircd's operator, from the config run.py writes: an operator may set user mode
# +F (relaxed flood protection), the most ngircd lets a client turn off.
NGIRCD_OPER = ("bench", "bench")
_WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="

# What one delivered chat line looks like on each door: line clients count
# newlines (nothing else arrives while they are measured), IRC clients count
# PRIVMSGs (so a server's PING is not a line), web clients count "said" frames.
RECEIPT = {"line": b"\n", "irc": b" PRIVMSG ", "web": b'"type":"said"'}


def irc_receipt_count(data: bytes) -> int:
    """Chat lines in a chunk of IRC (``:nick!user@host PRIVMSG #lobby :text``)."""
    return data.count(RECEIPT["irc"])


def _masked_text_frame(payload: bytes) -> bytes:
    """A client's WebSocket text frame (masked with a zero key, so the payload is as is)."""
    size = len(payload)
    length = bytes((0x80 | size,)) if size < 126 else bytes((0x80 | 126,)) + size.to_bytes(2)
    return b"\x81" + length + b"\x00\x00\x00\x00" + payload


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
    door: str = "line"  # line, irc or web: how it registers and what a chat line is
    stage: int = 0  # registration steps seen so far (IRC: 001; web: 101)
    carry: bytes = b""  # the last bytes read, for a receipt marker split between reads


class Engine:
    """The clients of one worker and the epoll loop that drives them."""

    def __init__(self, kind: str, port: int, ports: dict[str, int] | None = None) -> None:
        self.kind = kind
        self.port = port
        self.ports = ports or {}  # triochat-mixed: the port of each door
        self.senders = 0  # triochat-mixed: clients below this index are on the line door
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
        door = self.door_of(index)
        port = self.ports.get(door, self.port) if self.kind == TRIOCHAT_MIXED else self.port
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            raise LoadError(f"connect failed: {os.strerror(code)}")
        client = Client(index, f"u{index}", sock, door=door)
        self.clients[sock.fileno()] = client
        self.epoll.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN)

    def door_of(self, index: int) -> str:
        if self.kind in IRC_KINDS:
            return "irc"
        if self.kind == TRIOCHAT_WEB:
            return "web"
        if self.kind == TRIOCHAT_MIXED and index >= self.senders:
            return ("line", "irc", "web")[index % 3]
        return "line"

    def _on_connected(self, client: Client) -> None:
        client.connected = True
        code = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise LoadError(f"connect failed: {os.strerror(code)}")
        client.tail = b""
        name = client.name
        if client.door == "irc":
            client.sock.send(f"NICK {name}\r\nUSER {name} 0 * :{name}\r\n".encode())
        elif client.door == "web":
            client.sock.send(
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {_WS_KEY}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
        elif self.kind != NCAT:
            client.sock.send(f"{name}\n".encode())
        self.epoll.modify(client.sock.fileno(), select.EPOLLIN)

    def _registration_seen(self, client: Client, data: bytes) -> bool:
        """Whether ``data`` completes the client's registration (sending the next step)."""
        window = client.tail + data
        if client.door == "irc":
            if client.stage == 0:
                if f" 001 {client.name} ".encode() not in window:
                    client.tail = window[-64:]
                    return False
                client.stage, window = 1, window[window.index(b" 001 ") :]
                join = b"JOIN #lobby\r\n"
                if self.kind == NGIRCD:
                    user, password = NGIRCD_OPER
                    join = f"OPER {user} {password}\r\nMODE {client.name} +F\r\n".encode() + join
                self.send(client, join)
            needle = f" 366 {client.name} #lobby ".encode()
        elif client.door == "web":
            if client.stage == 0:
                if b"\r\n\r\n" not in window:
                    client.tail = window[-64:]
                    return False
                if not window.startswith(b"HTTP/1.1 101"):
                    raise LoadError(f"{client.name}: {window[:80]!r}")
                client.stage, window = 1, window[window.index(b"\r\n\r\n") + 4 :]
                message = f'{{"type":"register","name":"{client.name}","rooms":["#lobby"]}}'
                self.send(client, _masked_text_frame(message.encode()))
            needle = b'"type":"registered"'
        elif self.kind == NCAT:
            needle = b"already connected"  # its welcome announcement
        else:
            needle = f"* {client.name} joined #lobby\n".encode()  # our own join notice
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
        needle = RECEIPT[client.door]
        lines = data.count(needle)
        if len(needle) > 1:  # one split between two reads is counted across them
            edge = len(needle) - 1
            lines += (client.carry + data[:edge]).count(needle)
            client.carry = data[-edge:]
        client.newlines += lines
        self.lines += lines
        if client.door == "irc" and b"PING " in data:
            self._pong(client, data)
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

    def _pong(self, client: Client, data: bytes) -> None:
        # A server PINGs a quiet client (ngircd after PingTimeout, triochat after
        # --irc-ping); the few that reach a benchmark are answered here.
        for line in data.split(b"\n"):
            if line.startswith(b"PING "):
                self.send(client, b"PONG " + line[5:].rstrip(b"\r") + b"\r\n")

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
    ports: dict[str, int] = field(default_factory=dict)  # triochat-mixed: each door's port


def _engine(args: WorkerArgs) -> Engine:
    engine = Engine(args.kind, args.port, args.ports)
    engine.senders = args.params.get("senders", 0)
    return engine


def _echoes(kind: str) -> bool:
    """Whether a sender gets its own lines back (triochat's line door does)."""
    return kind in (TRIOCHAT, TRIOCHAT_MIXED)


def chat_line(door: str, text: str) -> bytes:
    """``text`` as one chat line on ``door`` (senders are on the line or IRC door)."""
    if door == "irc":
        return f"PRIVMSG #lobby :{text}\r\n".encode()
    return f"{text}\n".encode()


def _inflight(args: WorkerArgs) -> int:
    """This worker's share of the connections being set up at once."""
    return max(1, args.params["inflight"] // args.workers)


def _mine(args: WorkerArgs, total: int) -> list[int]:
    return [i for i in range(total) if i % args.workers == args.index]


def fanout(args: WorkerArgs, barrier: Any) -> dict[str, Any]:
    """N receivers and S senders in one room; each sender sends M lines at full speed."""
    p = args.params
    n, s, m, size = p["receivers"], p["senders"], p["lines"], p["line_bytes"]
    engine = _engine(args)
    try:
        engine.connect(_mine(args, n + s), inflight=_inflight(args), deadline=now() + p["timeout"])
        barrier.wait()
        engine.drain_quiet(0.3, now() + p["timeout"])
        for client in engine.clients.values():
            client.newlines = 0
            sender = client.index < s
            own = m if sender and not _echoes(args.kind) else 0
            client.expected = s * m - own
        barrier.wait()
        start, cpu = now(), cpu_seconds()
        for client in engine.clients.values():
            if client.index < s:
                engine.send(client, _fanout_payload(client.index, m, size, client.door))
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


def _fanout_payload(sender: int, lines: int, size: int, door: str = "line") -> bytes:
    out = []
    for seq in range(lines):
        head = f"s{sender}:{seq:06d} "
        out.append(chat_line(door, head + "x" * (size - len(head) - 1)))
    return b"".join(out)


def latency(args: WorkerArgs, barrier: Any) -> dict[str, Any]:
    """``clients`` clients send ``rate`` lines/s in total for ``duration`` s; probes time them."""
    p = args.params
    total, rate, duration = p["clients"], p["rate"], p["duration"]
    engine = _engine(args)
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
            own = sends[client.index] if not _echoes(args.kind) else 0
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
            client = by_index[j % total]
            engine.send(client, chat_line(client.door, f"@{sent_at:.6f}@ {pad}"))
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
    engine = _engine(args)
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
        sent_at, broadcast_cpu = 0.0, cpu_seconds()
        if sender is not None:
            sent_at = now()
            engine.send(sender, chat_line(sender.door, marker.decode()))
        others = [c for c in engine.clients.values() if c.index != 0]
        engine.run_until(lambda: all(c.marker_at for c in others), now() + p["timeout"])
        broadcast_cpu = cpu_seconds() - broadcast_cpu
        result = {
            "broadcast_cpu": broadcast_cpu,
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
