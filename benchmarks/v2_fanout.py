"""What protocol v2 and its numbers cost in fan-out, against v1 in the same run:
``python benchmarks/v2_fanout.py``.

One v1 sender sends M chat lines as fast as the server takes them; R
receivers in the room must each get all M. Deliveries per second until the
last one has its last line, and the server's CPU seconds, for:

- ``v1``: R v1 receivers (the room keeps no resume buffer);
- ``v2``: R v2 receivers (``TRIOCHAT/2``: tagged lines with room, number and
  UTC time, and the room keeps its last ``--resume-max`` events);
- ``mixed``: R of each, in one room (two renders per burst).

Receivers count newlines, so no client parses anything. ``V2_EXTRA`` adds
options to the server (``V2_EXTRA="--resume-max 0"``: no resume buffer). See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from web_fanout import count_until, cpu, drain, free_port, line_client, wait_listening

ROOT = Path(__file__).resolve().parent.parent


def v2_client(port: int, name: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"TRIOCHAT/2\n{name}\n".encode())
    return s


def run(kind: str, receivers: int, lines: int, size: int) -> dict[str, float]:
    port = free_port()
    command = [sys.executable, "-m", "triochat", "serve", "--port", str(port), "--rate", "0"]
    command += ["--send-queue", "100000", "--history", "0", "--log-level", "warning"]
    command += os.environ.get("V2_EXTRA", "").split()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port)
        sockets: list[socket.socket] = []
        if kind in ("v1", "mixed"):
            sockets += [line_client(port, f"l{i}") for i in range(receivers)]
        if kind in ("v2", "mixed"):
            sockets += [v2_client(port, f"v{i}") for i in range(receivers)]
        sender = line_client(port, "sender")
        drain([*sockets, sender])
        text = "x" * size
        burst = "".join(f"{text}{i}\n" for i in range(lines)).encode()
        cpu_before = cpu(server.pid)
        sender.setblocking(True)
        thread = threading.Thread(target=sender.sendall, args=(burst,))
        started = time.perf_counter()
        thread.start()
        ended, short = count_until(sockets, lines, timeout=120)
        thread.join()
        elapsed = ended - started
        used = cpu(server.pid) - cpu_before
        for s in [*sockets, sender]:
            s.close()
        return {
            "receivers": len(sockets),
            "seconds": elapsed,
            "deliveries_per_s": len(sockets) * lines / elapsed,
            "server_cpu_s": used,
            "short": short,
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--receivers", type=int, default=100)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="bytes of text per line")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default="v1,v2,mixed")
    args = parser.parse_args()
    print(
        f"{args.receivers} receivers per protocol, {args.lines} lines of {args.size} B, "
        f"median of {args.runs} runs (interleaved)"
    )
    kinds = args.kinds.split(",")
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for _ in range(args.runs):  # interleaved, so a noisy neighbour hurts all alike
        for kind in kinds:
            results[kind].append(run(kind, args.receivers, args.lines, args.size))
    print("| protocol | receivers | deliveries/s | time (s) | server CPU (s) | short |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in kinds:
        ordered = sorted(results[kind], key=lambda r: r["seconds"])
        r = ordered[len(ordered) // 2]
        print(
            f"| {kind} | {r['receivers']:.0f} | {r['deliveries_per_s']:,.0f} | "
            f"{r['seconds']:.2f} | {r['server_cpu_s']:.2f} | {r['short']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
