"""Fan-out to WebSocket clients beside line clients: ``python benchmarks/web_fanout.py``.

One sender sends M chat lines as fast as the server takes them; R receivers
in the room must each get all M. Deliveries per second until the last one
has its last line, and the server's CPU seconds, for:

- ``line``: R ``nc``-style receivers on the line door;
- ``web``: R WebSocket receivers on the web door (wsproto + h11, our outbox);
- ``mixed``: R of each, in one room;
- ``web-sender``: R WebSocket receivers, and the sender on the web door too
  (one JSON message per line, so no burst of lines is handed over at once);
- ``hypercorn``: R WebSocket receivers on a minimal chat made with hypercorn's
  trio worker and an ASGI app (one task and one ``send`` per recipient), the
  alternative issue 14 names.

The receivers count newlines: a line is one ``\\n``, and each web-door frame
holds exactly one (``protocol/web.py``), so no client parses anything. The
hypercorn chat sends the same JSON with a trailing newline. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def line_client(port: int, name: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"{name}\n".encode())
    return s


def masked(payload: bytes) -> bytes:
    size = len(payload)
    length = bytes((0x80 | size,)) if size < 126 else bytes((0x80 | 126,)) + size.to_bytes(2)
    return b"\x81" + length + b"\x00\x00\x00\x00" + payload


def web_client(port: int, name: str | None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    if name is not None:
        s.sendall(masked(json.dumps({"type": "register", "name": name}).encode()))
    return s


def drain(sockets: list[socket.socket], quiet: float = 0.5) -> None:
    """Read until nothing has arrived for ``quiet`` seconds."""
    selector = selectors.DefaultSelector()
    for s in sockets:
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
    while events := selector.select(quiet):
        for key, _ in events:
            key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
    selector.close()


def count_until(sockets: list[socket.socket], lines: int, timeout: float) -> tuple[float, int]:
    """When every socket has had ``lines`` newlines (perf_counter); and how many are short."""
    selector = selectors.DefaultSelector()
    counts = {s: 0 for s in sockets}
    for s in sockets:
        selector.register(s, selectors.EVENT_READ)
    waiting = len(sockets)
    start = time.perf_counter()
    deadline = start + timeout
    while waiting and time.perf_counter() < deadline:
        for key, _ in selector.select(0.5):
            s = key.fileobj
            data = s.recv(1 << 20)  # type: ignore[union-attr]
            before = counts[s]  # type: ignore[index]
            counts[s] = before + data.count(b"\n")  # type: ignore[index]
            if before < lines <= counts[s]:  # type: ignore[index]
                waiting -= 1
    selector.close()
    return time.perf_counter(), waiting


def run(kind: str, receivers: int, lines: int, size: int) -> dict[str, float]:
    port, web_port = free_port(), free_port()
    if kind == "hypercorn":
        command = [
            sys.executable,
            str(Path(__file__).with_name("hypercorn_chat.py")),
            str(web_port),
        ]
    else:
        command = [sys.executable, "-m", "triochat", "serve", "--port", str(port)]
        command += ["--web-port", str(web_port), "--rate", "0", "--send-queue", "100000"]
        command += ["--history", "0", "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_listening(web_port)
        sockets: list[socket.socket] = []
        if kind in ("line", "mixed"):
            sockets += [line_client(port, f"l{i}") for i in range(receivers)]
        if kind in ("web", "web-sender", "mixed", "hypercorn"):
            sockets += [web_client(web_port, f"w{i}") for i in range(receivers)]
        if kind == "hypercorn":
            sender = web_client(web_port, None)
        elif kind == "web-sender":
            sender = web_client(web_port, "sender")
        else:
            sender = line_client(port, "sender")
        drain([*sockets, sender])
        text = "x" * size
        if kind == "hypercorn":
            burst = b"".join(masked(f"{text}{i}".encode()) for i in range(lines))
        elif kind == "web-sender":
            burst = b"".join(
                masked(json.dumps({"type": "say", "room": "#lobby", "text": f"{text}{i}"}).encode())
                for i in range(lines)
            )
        else:
            burst = "".join(f"{text}{i}\n" for i in range(lines)).encode()
        cpu_before = cpu(server.pid)
        sender.setblocking(True)
        # The burst goes from a thread, so the receivers are read meanwhile.
        thread = threading.Thread(target=sender.sendall, args=(burst,))
        started = time.perf_counter()
        thread.start()
        ended, short = count_until(sockets, lines, timeout=120)
        thread.join()
        elapsed = ended - started
        used = cpu(server.pid) - cpu_before
        for s in [*sockets, sender]:
            s.close()
        deliveries = len(sockets) * lines
        return {
            "receivers": len(sockets),
            "seconds": elapsed,
            "deliveries_per_s": deliveries / elapsed,
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
    parser.add_argument("--kinds", default="line,web,mixed,web-sender,hypercorn")
    args = parser.parse_args()
    print(
        f"{args.receivers} receivers per door, {args.lines} lines of {args.size} B, "
        f"median of {args.runs} runs"
    )
    print("| door | receivers | deliveries/s | time (s) | server CPU (s) | short |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in args.kinds.split(","):
        results = sorted(
            (run(kind, args.receivers, args.lines, args.size) for _ in range(args.runs)),
            key=lambda r: r["seconds"],
        )
        r = results[len(results) // 2]
        print(
            f"| {kind} | {r['receivers']:.0f} | {r['deliveries_per_s']:,.0f} | "
            f"{r['seconds']:.2f} | {r['server_cpu_s']:.2f} | {r['short']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
