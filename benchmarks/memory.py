"""Where an idle connection's memory goes: ``python benchmarks/memory.py --door line``.

Runs a triochat server in this process (``run_server``, ``--rate 0``) and, in a
child process, the load generator's engine (``loadgen.py``), which connects
and registers ``--clients`` idle clients on one door, in ``#lobby``. The server
measures itself before and after they are all registered and idle: resident
memory (``VmRSS``) per connection, and with ``--trace`` a tracemalloc snapshot
diff, grouped by the source line that allocated (``--group lineno``) or by the
innermost triochat or trio frame (``--group owner``), so what each connection
holds can be read line by line. tracemalloc itself costs memory and time, so the
RSS figure of a ``--trace`` run is not the one to quote. Bounded in time (the
child gives up after ``--timeout`` seconds) and on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

if TYPE_CHECKING:
    from triochat.server.listener import ChatServer

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"line": loadgen.TRIOCHAT, "irc": loadgen.TRIOCHAT_IRC, "web": loadgen.TRIOCHAT_WEB}


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def child(kind: str, port: int, clients: int, first: int, timeout: float) -> None:
    """In the child: register ``clients`` clients, say so, and hold them until stdin closes."""
    engine = loadgen.Engine(kind, port)
    indices = list(range(first, first + clients))
    engine.connect(indices, inflight=50, deadline=loadgen.now() + timeout)
    engine.drain_quiet(0.3, loadgen.now() + timeout)
    print("ready", flush=True)
    sys.stdin.read()
    engine.close()


async def hold(kind: str, port: int, clients: int, first: int, limit: float) -> trio.Process:
    """Start a child holding ``clients`` registered clients; return once they are."""
    command = [sys.executable, __file__, "--child", kind, str(port), str(clients), str(first)]
    command += ["--timeout", str(limit)]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    with trio.fail_after(limit):
        data = b""
        while b"ready" not in data:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"the client process failed ({await process.wait()})")
            data += chunk
    return process


def owner(trace: tracemalloc.Traceback) -> str:
    """The innermost frame in triochat (else trio, else the innermost), as file:line."""
    for wanted in ("/triochat/", "/trio/"):
        for frame in reversed(trace):  # tracemalloc lists the oldest frame first
            if wanted in frame.filename:
                return f"{_short(frame.filename)}:{frame.lineno}"
    frame = trace[-1]
    return f"{_short(frame.filename)}:{frame.lineno}"


def _short(filename: str) -> str:
    for marker in ("/triochat/", "/trio/", "/lib/python3"):
        if marker in filename:
            return filename[filename.index(marker) + 1 :]
    return filename


def report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, group: str) -> None:
    rows: dict[str, list[int]] = {}
    if group == "owner":
        old: dict[str, int] = {}
        for stat in before.statistics("traceback"):
            key = owner(stat.traceback)
            old[key] = old.get(key, 0) + stat.size
        for stat in after.statistics("traceback"):
            key = owner(stat.traceback)
            row = rows.setdefault(key, [0, 0])
            row[0] += stat.size
            row[1] += stat.count
        for key, size in old.items():
            rows.setdefault(key, [0, 0])[0] -= size
    else:
        for diff in after.compare_to(before, "lineno"):
            frame = diff.traceback[0]
            rows[f"{_short(frame.filename)}:{frame.lineno}"] = [diff.size_diff, diff.count_diff]
    total = sum(size for size, _ in rows.values())
    print(f"\ntracemalloc: {total / n:,.0f} B per connection (sum of the rows below)\n")
    print("| B per connection | blocks per connection | where |")
    print("|---:|---:|---|")
    for key, (size, count) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        if abs(size) / n < 8:
            continue
        path, _, line = key.rpartition(":")
        source = ""
        for candidate in (ROOT / path, Path(sys.prefix) / "lib" / path):
            if candidate.exists():
                source = linecache.getline(str(candidate), int(line)).strip()
        print(f"| {size / n:,.0f} | {count / n:.2f} | `{key}` {source[:70]} |")


def time_writes() -> Callable[[], None]:
    """Count the outboxes' writes and their CPU time from now; the call returned prints them."""
    from triochat.server.outbox import Outbox

    flush = Outbox.flush
    spent = [0.0, 0]

    def timed(outbox: Outbox) -> None:
        start = time.thread_time()
        flush(outbox)
        spent[0] += time.thread_time() - start
        spent[1] += 1

    Outbox.flush = timed  # type: ignore[method-assign]

    def report() -> None:
        Outbox.flush = flush  # type: ignore[method-assign]
        cpu, count = spent
        each = cpu / max(count, 1) * 1e6
        print(f"registering: {count} writes, {cpu * 1e3:.0f} ms of CPU ({each:.1f} µs each)")

    return report


def broadcast(chat: ChatServer, n: int) -> None:
    """One chat line to all: the hub's hand-over, then the flusher's writes, each timed.

    Both in this thread's CPU time (``time.thread_time``), which a busy machine
    does not inflate as it does wall-clock time, and wall-clock time.
    """
    hub = chat.hub
    member = hub.member("u20")
    assert member is not None
    assert member.room is not None
    flusher = chat._flusher
    clocks = (time.thread_time, time.perf_counter)
    start = [clock() for clock in clocks]
    hub.say(member, member.room, ["BROADCAST-7f3a"])  # render once, append to every outbox
    handed = [clock() for clock in clocks]
    dirty, flusher._dirty = flusher._dirty, []
    for outbox in dirty:  # what the flusher's next round does: one os.write each
        outbox.flush()
    written = [clock() for clock in clocks]
    print(f"\none line to {len(dirty)} members (CPU / wall):")
    for what, (a, b) in (
        ("hub.say: render, hand the bytes to every outbox", (start, handed)),
        ("the flusher: one os.write per member", (handed, written)),
        ("both", (start, written)),
    ):
        cpu, wall = (b[0] - a[0]) * 1e3, (b[1] - a[1]) * 1e3
        each = (b[0] - a[0]) / len(dirty) * 1e6
        print(f"- {what}: {cpu:.1f} / {wall:.1f} ms ({each:.2f} µs of CPU per member)")


async def measure(args: argparse.Namespace) -> None:
    from triochat.server.irc import IRCConfig
    from triochat.server.listener import ServerConfig
    from triochat.server.run import ServeConfig, run_server
    from triochat.server.web import WebConfig

    config = ServeConfig(
        server=ServerConfig(port=0, rate=0, max_clients=args.clients + 100),
        irc=IRCConfig(port=0) if args.door == "irc" else None,
        web=WebConfig(port=0) if args.door == "web" else None,
    )
    async with trio.open_nursery() as nursery:
        running = await nursery.start(run_server, config)
        listeners = {"irc": running.irc_listeners, "web": running.web_listeners}.get(
            args.door, running.listeners
        )
        port = listeners[0].socket.getsockname()[1]
        kind = KINDS[args.door]
        # A few clients first, so that what is made once (imports, caches) is not counted.
        warm = await hold(kind, port, 20, 0, args.timeout)
        gc.collect()
        if args.trace:
            tracemalloc.start(args.frames)
        first = tracemalloc.take_snapshot() if args.trace else None
        rss_before = rss()
        writes = time_writes() if args.broadcast else None
        began = time.thread_time(), time.perf_counter()
        clients = await hold(kind, port, args.clients, 20, args.timeout)
        cpu, wall = time.thread_time() - began[0], time.perf_counter() - began[1]
        print(f"registering {args.clients}: {cpu:.2f} s of the server's CPU, {wall:.2f} s in all")
        if writes is not None:
            writes()
        await trio.sleep(0.5)
        gc.collect()
        rss_after = rss()
        second = tracemalloc.take_snapshot() if args.trace else None
        n = args.clients
        print(f"{args.door} door, {n} idle registered clients, pid {os.getpid()}")
        print(f"RSS growth: {(rss_after - rss_before) / n:,.0f} B per connection")
        if first is not None and second is not None:
            report(first, second, n, args.group)
        if args.broadcast:
            broadcast(running.chat, n)
            await trio.sleep(1)  # the clients read it
        for process in (clients, warm):
            assert process.stdin is not None
            await process.stdin.aclose()
            await process.wait()
        running.shutdown()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        parser = argparse.ArgumentParser()
        parser.add_argument("child", nargs=4)
        parser.add_argument("--timeout", type=float, default=120.0)
        args = parser.parse_args(sys.argv[1:][1:])
        kind, port, clients, first = args.child
        child(kind, int(port), int(clients), int(first), args.timeout)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--door", choices=sorted(KINDS), default="line")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--trace", action="store_true", help="also a tracemalloc diff")
    parser.add_argument("--frames", type=int, default=30, help="tracemalloc frames kept")
    parser.add_argument("--group", choices=["lineno", "owner"], default="owner")
    parser.add_argument("--broadcast", action="store_true", help="then time one line to all")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    trio.run(measure, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
