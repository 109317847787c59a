"""Fan-out over the Redis backplane: one node, one node linked to Redis, two linked nodes.

Usage: ``python benchmarks/two_node.py [--clients 60] [--senders 4] [--messages 250]``

``--baseline TREE`` (another checkout, e.g. ``main``) runs the linked cases with that
tree's nodes and this one's in turn, ``--rounds`` times, in the same run: the way to
measure what a change costs on a machine shared with other work.

Everything runs on 127.0.0.1. The benchmark starts its own ``redis-server`` on
a free port (so nothing else shares it), measures Redis's own publish rate
with ``redis-benchmark -t publish`` in the same run, then starts the triochat
nodes as subprocesses (``triochat serve --rate 0``) and connects every client
to ``#lobby``, spread round-robin over the nodes. Each sender sends its
messages as fast as TCP lets it; every client records when each line
arrives. Reported: deliveries per second (one line to one client counts
once) and the send-to-receive latency of every delivery. Every loop is
bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from triochat.client.connection import ChatClient, open_chat_client  # noqa: E402

DEADLINE = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Result:
    name: str
    deliveries: int
    seconds: float
    latencies: list[float]

    def row(self) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[int(len(lat) * 0.99)] * 1000
        rate = self.deliveries / self.seconds
        return f"| {self.name} | {self.deliveries} | {rate:,.0f} | {p50:.1f} | {p99:.1f} |"


async def start_node(
    redis_url: str | None, cluster: str, tree: Path = REPO
) -> tuple[trio.Process, int]:
    command = [sys.executable, "-m", "triochat", "serve", "--port", "0", "--rate", "0"]
    command += ["--log-level", "warning", "--send-queue", "65536"]
    if redis_url:
        command += ["--redis", redis_url, "--cluster", cluster]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    process = await trio.lowlevel.open_process(command, env=env, stdout=subprocess.PIPE)
    assert process.stdout is not None
    with trio.fail_after(15):
        banner = b""
        while b"\n" not in banner:
            banner += await process.stdout.receive_some(200)
    return process, int(banner.decode().split(":")[-1])


async def run_case(
    name: str, ports: list[int], clients: int, senders: int, messages: int, rate: float = 0
) -> Result:
    conns: list[ChatClient] = []
    for i in range(clients):
        client = await open_chat_client("127.0.0.1", ports[i % len(ports)])
        await client.register(f"u{i}")
        conns.append(client)
    # Wait until the last join has reached everyone, so only the load is measured.
    last = f"* u{clients - 1} joined #lobby"
    with trio.fail_after(30):
        for client in conns[:-1]:
            while not (await client.receive_line()).endswith(last):
                pass
    expected = senders * messages
    latencies: list[float] = []
    done = trio.Event()
    remaining = clients

    async def receive(client: ChatClient) -> None:
        nonlocal remaining
        got = 0
        while got < expected:
            line = await client.receive_line()
            marker = line.rfind(" t=")
            if marker < 0:
                continue
            latencies.append(time.perf_counter() - float(line[marker + 3 :]))
            got += 1
        remaining -= 1
        if not remaining:
            done.set()

    async def send(client: ChatClient) -> None:
        interval = senders / rate if rate else 0
        for n in range(messages):
            await client.send_line(f"m{n} t={time.perf_counter():.6f}")
            if interval:
                await trio.sleep(interval)

    start = time.perf_counter()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for client in conns:
                nursery.start_soon(receive, client)
            for client in conns[:senders]:
                nursery.start_soon(send, client)
            await done.wait()
    seconds = time.perf_counter() - start
    for client in conns:
        await client.aclose()
    return Result(name, expected * clients, seconds, latencies)


def redis_publish_rate(port: int, subscribers: int) -> str:
    """``redis-benchmark``'s PUBLISH rate, to a channel with ``subscribers`` (as our nodes)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return "redis-benchmark not installed"
    # Redis 7's redis-benchmark has no built-in publish test (-t publish is ignored),
    # so the command is given explicitly, with a payload the size of a chat line.
    listeners = [
        subprocess.Popen(
            ["redis-cli", "-p", str(port), "subscribe", "bench"], stdout=subprocess.DEVNULL
        )
        for _ in range(subscribers)
    ]
    try:
        time.sleep(0.3)
        payload = "x" * 64
        out = subprocess.run(
            [binary, "-p", str(port), "-n", "100000", "-q", "publish", "bench", payload],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    finally:
        for listener in listeners:
            listener.kill()
            listener.wait()
    match = re.search(r"([\d.,]+) requests per second", out.replace("\r", "\n"))
    return f"{match.group(1)} PUBLISH/s" if match else out.strip()


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    redis = await trio.lowlevel.open_process(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await trio.sleep(0.3)
        publish = await trio.to_thread.run_sync(redis_publish_rate, port, 2)
        results: list[Result] = []
        paced: list[Result] = []
        cases = [
            ("1 node, local", None, 1, REPO),
            ("1 node, Redis", url, 1, REPO),
            ("2 nodes, Redis", url, 2, REPO),
        ]
        if args.baseline is not None:
            base = Path(args.baseline)
            cases = [
                (f"{name}, {label} #{round_ + 1}", url, nodes, tree)
                for round_ in range(args.rounds)
                for label, tree in (("baseline", base), ("this tree", REPO))
                for name, nodes in (("1 node, Redis", 1), ("2 nodes, Redis", 2))
            ]
        for number, (name, redis_url, nodes, tree) in enumerate(cases):
            processes = [await start_node(redis_url, f"bench{number}", tree) for _ in range(nodes)]
            try:
                ports = [p for _, p in processes]
                results.append(
                    await run_case(name, ports, args.clients, args.senders, args.messages)
                )
                paced.append(
                    await run_case(
                        name, ports, args.clients, args.senders, args.paced, rate=args.rate
                    )
                )
            finally:
                for process, _ in processes:
                    process.terminate()
                    with trio.move_on_after(5):
                        await process.wait()
                    process.kill()
        print(
            f"{args.clients} clients in #lobby, {args.senders} senders x {args.messages} "
            f"lines, {os.cpu_count()} CPUs; redis-benchmark publish (2 subscribers, 64 B): "
            f"{publish}\n"
        )
        print("Saturated (senders send as fast as TCP allows):\n")
        print("| run | deliveries | deliveries/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|")
        for result in results:
            print(result.row())
        print(f"\nPaced ({args.rate:g} lines/s offered, {args.paced} lines per sender):\n")
        print("| run | deliveries | deliveries/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|")
        for result in paced:
            print(result.row())
        spread = [statistics.mean(r.latencies) * 1000 for r in paced]
        print(f"\npaced mean latency ms: {', '.join(f'{m:.1f}' for m in spread)}")
    finally:
        redis.terminate()
        with trio.move_on_after(5):
            await redis.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=60)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--messages", type=int, default=250)
    parser.add_argument("--rate", type=float, default=100, help="paced run: lines/s offered")
    parser.add_argument("--paced", type=int, default=50, help="paced run: lines per sender")
    parser.add_argument("--baseline", help="another tree: its nodes and ours in turn")
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: rounds")
    trio.run(main, parser.parse_args())
