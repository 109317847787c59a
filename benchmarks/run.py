"""triochat against ``ncat --chat`` and ngircd, side by side: ``python benchmarks/run.py``.

Starts each server itself on a free port on 127.0.0.1 (a fresh one for every
measurement), drives it with the load generator in ``loadgen.py`` (worker
processes of plain sockets), and prints the results as Markdown tables with
the ratios to the references. The server kinds: ``triochat`` (line door),
``ncat``, ``triochat-irc`` (every client on triochat's IRC door), ``ngircd``
(over IRC, flood penalties off as far as its options go: see
``NGIRCD_CONFIG``) and ``triochat-mixed`` (fan-out receivers on the line, IRC
and web doors in equal parts, senders on the line door). ``--quick`` is a
smaller run for a smoke test; ``--json FILE`` also writes every number. See
docs/benchmarks.md.

Scenarios (each bounded in count and time):

- fanout: N receivers and S senders in one room, each sender sends M lines of
  B bytes as fast as the server accepts them; deliveries/s until every
  receiver has every line, and lines missing.
- latency: C clients send R lines/s in total for D seconds, paced; the time
  from send to receipt, p50/p99/max, and lines missing.
- scale: K idle registered clients; time to register them all, server memory
  per connection, and the time one broadcast line takes to reach them all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 10.0


# --- servers -------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    process: subprocess.Popen[bytes]
    port: int
    ports: dict[str, int] = field(default_factory=dict)  # triochat: each door's port
    cleanup: Callable[[], None] | None = None

    def cpu(self) -> float:
        """CPU seconds the server's threads have used, to the nanosecond.

        From each thread's ``schedstat`` (its time on a CPU): ``stat``'s user and
        system times count 10-ms ticks, too coarse for a fan-out that takes 80 ms.
        A thread that ended is no longer counted: triochat's worker threads (SQLite,
        Argon2) idle for seconds before they end, longer than one measurement.
        """
        tasks = Path(f"/proc/{self.process.pid}/task")
        total = 0
        for task in tasks.iterdir():
            with suppress(OSError):  # it ended meanwhile
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    def rss(self) -> int:
        """Resident memory in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT: triochat shuts down cleanly, and py-spy (--profile) writes its output.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.cleanup is not None:
            self.cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SEND_QUEUE = 100_000
"""triochat's ``--send-queue`` in every run (``--triochat-args`` can set another)."""
PROFILE: list[str] = []  # set by --profile: a py-spy command line to wrap triochat in
TRIOCHAT_ARGS: list[str] = []  # set by --triochat-args: more options for triochat serve


_READY = {
    "line": b"triochat listening on ",
    "irc": b"triochat irc listening on ",
    "web": b"triochat web listening on ",
}


def start_triochat(max_clients: int, doors: tuple[str, ...] = ("line",)) -> Server:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [*PROFILE, sys.executable, "-m", "triochat", "serve"]
    command += ["--host", "127.0.0.1", "--port", "0"]
    command += ["--rate", "0", "--max-clients", str(max_clients), "--log-level", "warning"]
    # With flood control off, four senders outrun a receiver of the load generator
    # that is descheduled for a moment by more than the default 4,096 lines, and the
    # slow-consumer policy evicts it; ncat has no such bound (docs/benchmarks.md).
    command += ["--send-queue", str(SEND_QUEUE)]
    command += [f"--{door}-port=0" for door in doors if door != "line"]
    command += TRIOCHAT_ARGS
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    ports: dict[str, int] = {}
    line = b""
    wanted = {"line", *doors}  # the line door always listens, and prints first
    while time.monotonic() < deadline and len(ports) < len(wanted):
        line = process.stdout.readline()  # the server prints them within a second
        for door, ready in _READY.items():
            if line.startswith(ready):
                ports[door] = int(line.strip().rstrip(b"/").rsplit(b":", 1)[1])
        if not line:
            break
    if len(ports) < len(wanted):
        process.kill()
        raise RuntimeError(f"triochat did not start: {line!r}")
    names: dict[tuple[str, ...], str] = {("line",): "triochat", ("irc",): "triochat-irc"}
    kind = names.get(doors, "triochat-mixed")
    return Server(kind, process, ports[doors[0]], ports)


def start_ncat(max_clients: int) -> Server:
    port = _free_port()
    command = ["ncat", "--chat", "-l", "127.0.0.1", str(port), "--max-conns", str(max_clients)]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("ncat did not start")
    time.sleep(0.1)  # let ncat forget the probe connection
    return Server("ncat", process, port)


# ngircd 26 as a second reference. What its options allow to be switched off:
# MaxPenaltyTime = 0 ("0 to disable penalties altogether": no delay for a
# client that sends too much), MaxConnectionsIP = 0 and MaxConnections = 0 (no
# limits), no PAM, DNS or IDENT lookups (each would add a round trip to every
# registration), Ping/PongTimeout long enough not to PING idle benchmark
# clients. Every client also becomes an operator and sets user mode +F
# ("relaxed flood protection"), which raises the commands ngircd handles per
# client per loop from 3 to 10. What cannot be changed without rebuilding it:
# that cap of 10 commands per client per round of its event loop
# (MAX_COMMANDS_SERVICE), and its fixed read buffer per client (READBUFFER_LEN).
NGIRCD_CONFIG = """\
[Global]
Name = bench.triochat.invalid
Info = triochat benchmark reference
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = benchmark
PidFile = {dir}/ngircd.pid
ServerUID = {uid}
ServerGID = {gid}
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxPenaltyTime = 0
PingTimeout = 3600
PongTimeout = 3600
[Options]
PAM = no
DNS = no
Ident = no
[Operator]
Name = {oper}
Password = {password}
"""
NGIRCD = "/usr/sbin/ngircd"


def start_ngircd(max_clients: int) -> Server:
    port = _free_port()
    directory = tempfile.TemporaryDirectory(prefix="bench-ngircd-")
    config = Path(directory.name) / "ngircd.conf"
    oper, password = loadgen.NGIRCD_OPER
    config.write_text(
        NGIRCD_CONFIG.format(
            port=port,
            dir=directory.name,
            uid=os.getuid(),
            gid=os.getgid(),
            oper=oper,
            password=password,
        )
    )
    command = [NGIRCD, "--nodaemon", "--config", str(config)]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        directory.cleanup()
        raise RuntimeError("ngircd did not start")
    return Server("ngircd", process, port, cleanup=directory.cleanup)


STARTERS: dict[str, Callable[[int], Server]] = {
    "triochat": start_triochat,
    "ncat": start_ncat,
    "triochat-irc": lambda n: start_triochat(n, ("irc",)),
    "triochat-mixed": lambda n: start_triochat(n, ("line", "irc", "web")),
    "ngircd": start_ngircd,
}
# The reference each kind is compared with in the tables.
REFERENCE = {"triochat": "ncat", "triochat-irc": "ngircd", "triochat-mixed": "triochat"}


# --- running one scenario ----------------------------------------------------------------


# Connections set up at once (per run, split between the workers). ncat listens
# with a backlog of 10, and TCP retries connections beyond it only after a
# second or more; triochat gets the kernel's maximum backlog from trio.
INFLIGHT = {"triochat": 100, "ncat": 8, "triochat-irc": 100, "triochat-mixed": 100, "ngircd": 8}


def run_workers(
    server: Server,
    scenario: str,
    params: dict[str, Any],
    workers: int,
    phases: int,
    at_phase: Callable[[int], None],
) -> list[dict[str, Any]]:
    """Run ``scenario`` in ``workers`` processes; call ``at_phase(i)`` at each barrier."""
    params = {**params, "inflight": INFLIGHT[server.kind]}
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(workers + 1, timeout=params["timeout"] + 30)
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=loadgen.worker_main,
            args=(
                scenario,
                loadgen.WorkerArgs(server.kind, server.port, i, workers, params, server.ports),
                barrier,
                results,
            ),
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for phase in range(phases):
            try:
                barrier.wait()
            except Exception:  # broken barrier: a worker failed; its error is queued
                break
            at_phase(phase)
        collected = [results.get(timeout=params["timeout"] + 30) for _ in processes]
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    errors = [r["error"] for _, r in collected if "error" in r]
    if errors:
        raise loadgen.LoadError("; ".join(errors))
    if server.process.poll() is not None:
        raise loadgen.LoadError(f"{server.kind} exited with {server.process.returncode}")
    return [r for _, r in sorted(collected, key=lambda item: item[0])]


def measure(
    kind: str,
    scenario: str,
    params: dict[str, Any],
    workers: int,
    clients: int,
    probe: Callable[[Server], float],
    phases: tuple[int, int, int],
) -> tuple[list[dict[str, Any]], float]:
    """Run ``scenario`` on a fresh server; the workers' results and how much ``probe`` grew.

    ``phases`` is (phases in all, the phase at whose start ``probe`` is read
    first, the phase at whose start it is read again).
    """
    server = STARTERS[kind](clients + 100)
    total, first, second = phases
    marks: dict[str, float] = {}

    def at_phase(phase: int) -> None:
        if phase == first:
            marks["start"] = probe(server)
        elif phase == second:
            marks["growth"] = probe(server) - marks["start"]

    try:
        parts = run_workers(server, scenario, params, workers, total, at_phase)
    finally:
        server.stop()
    return parts, marks["growth"]


def fanout(kind: str, params: dict[str, Any], workers: int) -> dict[str, Any]:
    clients = params["receivers"] + params["senders"]
    parts, cpu = measure(kind, "fanout", params, workers, clients, Server.cpu, (3, 1, 2))
    start = min(p["start"] for p in parts)
    elapsed = max(p["done"] for p in parts) - start
    delivered = sum(p["delivered"] for p in parts)
    return {
        "deliveries_per_s": delivered / elapsed,
        "elapsed_s": elapsed,
        "deliveries": delivered,
        "missing": sum(p["missing"] for p in parts),
        "server_cpu": cpu / max(p["wall"] for p in parts),
        "server_us_per_delivery": cpu / delivered * 1e6,
        "loadgen_cpu": max(p["cpu"] / p["wall"] for p in parts),
    }


def latency(kind: str, params: dict[str, Any], workers: int) -> dict[str, Any]:
    parts, cpu = measure(kind, "latency", params, workers, params["clients"], Server.cpu, (3, 1, 2))
    samples = sorted(x for p in parts for x in p["latencies"])
    if not samples:
        raise loadgen.LoadError("no latency samples")

    def pct(q: float) -> float:
        return samples[max(0, int(q / 100 * len(samples) + 0.5) - 1)]

    return {
        "p50_ms": pct(50) * 1000,
        "p99_ms": pct(99) * 1000,
        "max_ms": samples[-1] * 1000,
        "samples": len(samples),
        "missing": sum(p["missing"] for p in parts),
        "send_lag_ms": max(p["lag"] for p in parts) * 1000,
        "server_cpu": cpu / max(p["wall"] for p in parts),
        "loadgen_cpu": max(p["cpu"] / p["wall"] for p in parts),
    }


def scale(kind: str, params: dict[str, Any], workers: int) -> dict[str, Any]:
    clients = params["clients"]
    server = STARTERS[kind](clients + 100)
    marks: dict[str, float] = {}

    def at_phase(phase: int) -> None:
        # The phases of loadgen.scale: at rest, registered, quiet, broadcast sent, reached.
        if phase == 0:
            marks["rss"], marks["at_rest_cpu"] = server.rss(), server.cpu()
        elif phase == 1:
            marks["register_cpu"] = server.cpu() - marks["at_rest_cpu"]
        elif phase == 2:
            marks["rss_growth"] = server.rss() - marks["rss"]
        elif phase == 3:
            marks["cpu"] = server.cpu()
        elif phase == 4:
            marks["broadcast_cpu"] = server.cpu() - marks["cpu"]

    try:
        parts = run_workers(server, "scale", params, workers, 5, at_phase)
    finally:
        server.stop()
    start = min(p["start"] for p in parts)
    sent_at = max(p["sent_at"] for p in parts)
    return {
        "register_s": max(p["registered"] for p in parts) - start,
        # The server's own CPU to accept and register them all (steadier than the wall
        # time on a shared machine).
        "register_server_cpu_s": marks["register_cpu"],
        "bytes_per_conn": marks["rss_growth"] / clients,
        "broadcast_ms": (max(p["reached"] for p in parts) - sent_at) * 1000,
        # In clock ticks of 10 ms: coarse, but enough to tell the server's part from
        # the load generator's in a broadcast of 100 ms or more.
        "broadcast_server_cpu_ms": marks["broadcast_cpu"] * 1000,
        "broadcast_loadgen_cpu_ms": max(p["broadcast_cpu"] for p in parts) * 1000,
        "unreached": sum(p["unreached"] for p in parts),
        "loadgen_cpu_s": max(p["cpu"] for p in parts),
    }


# --- the plan, the repetitions and the report ----------------------------------------------


Step = tuple[str, str, Callable[..., dict[str, Any]], dict[str, Any], int | None, tuple[str, ...]]

LINE_AND_IRC = ("triochat", "ncat", "triochat-irc", "ngircd")


def plan(quick: bool, sizes: list[int] | None = None) -> list[Step]:
    """(section, label, function, params, repetitions or None for --reps, kinds) per measurement.

    ``sizes``: the scale rows' client counts instead of the usual ones (``--clients``).
    """
    fan = {"receivers": 100, "senders": 4, "lines": 2000, "line_bytes": 40, "timeout": 30.0}
    lat = {"clients": 200, "duration": 5.0, "drain": 10.0, "line_bytes": 40, "probe_every": 5}
    # ncat closes connections past about 1,015 (select()), so it has no 10,000 row.
    scales: list[tuple[int, int | None, tuple[str, ...]]] = [
        (1000, None, LINE_AND_IRC),
        # triochat-mixed: a third of the clients on each door (the line, IRC and web).
        (10_000, None, ("triochat", "triochat-irc", "triochat-mixed")),
        # ngircd announces every JOIN to the whole channel (50 M lines for 10,000)
        # and runs into the 300-s bound, so it is tried once.
        (10_000, 1, ("ngircd",)),
        # 20,000 open connections on one node, as far as the hard RLIMIT_NOFILE lets
        # one process (the server) hold them; the load generator's processes share them.
        (max_clients_here(20_000), 1, ("triochat",)),
    ]
    rates: tuple[int, ...] = (2000,)
    if quick:
        fan["lines"] = 500
        lat["duration"] = 2.0
        scales = [(500, None, LINE_AND_IRC)]
    if sizes:
        scales = [(n, None, (*LINE_AND_IRC, "triochat-mixed")) for n in sizes]
    every = (*LINE_AND_IRC, "triochat-mixed")
    label = f"N={fan['receivers']} S={fan['senders']} M={fan['lines']}"
    steps: list[Step] = [("fanout", label, fanout, fan, None, every)]
    if not quick:
        # ncat finishes M=2,000 in about 50 ms, where a few ms of skew between the
        # load generator's processes matter; ten times the lines is steadier.
        long = {**fan, "lines": 20_000, "timeout": 120.0}
        label = f"N={long['receivers']} S={long['senders']} M={long['lines']}"
        steps.append(("fanout", label, fanout, long, None, every))
        rates = (200, 2000)
    for rate in rates:
        params = {**lat, "rate": rate, "timeout": lat["duration"] + lat["drain"] + 60}
        label = f"{lat['clients']} clients, {rate} lines/s"
        steps.append(("latency", label, latency, params, None, LINE_AND_IRC))
    for clients, reps, kinds in scales:
        params = {"clients": clients, "timeout": 300.0}
        steps.append(("scale", f"{clients} idle clients", scale, params, reps, kinds))
    return steps


def max_clients_here(wanted: int) -> int:
    """``wanted``, or as many clients as the hard open-file limit leaves room for in one
    process (100 descriptors kept for the server's own: listeners, epoll, logs)."""
    return min(wanted, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100)


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit to the hard limit (servers and workers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()
    ncat = subprocess.run(["ncat", "--version"], capture_output=True, text=True, check=False)
    ngircd = ["(not installed)"]
    if Path(NGIRCD).exists():
        out = subprocess.run([NGIRCD, "--version"], capture_output=True, text=True, check=False)
        ngircd = out.stdout.splitlines() or ngircd
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ncat": (ncat.stderr or ncat.stdout).strip().splitlines()[0],
        "ngircd": ngircd[0],
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "loadavg_at_start": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--only", choices=["fanout", "latency", "scale"], action="append")
    parser.add_argument(
        "--servers",
        default="triochat,ncat,triochat-irc,ngircd,triochat-mixed",
        help="comma-separated, of: " + ", ".join(STARTERS),
    )
    parser.add_argument("--label", action="append", help="run only steps whose label has this")
    parser.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        help="the scale rows' client counts, e.g. 2000,5000 (to see how registration grows)",
    )
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument(
        "--profile", type=Path, help="run triochat under py-spy, writing collapsed stacks here"
    )
    parser.add_argument(
        "--triochat-args",
        default="",
        metavar="OPTIONS",
        help="more options for triochat serve, e.g. '--db /tmp/bench.db' to measure what it costs",
    )
    args = parser.parse_args()
    raise_nofile()
    TRIOCHAT_ARGS[:] = shlex.split(args.triochat_args)
    if args.profile:
        PROFILE[:] = ["py-spy", "record", "--format", "raw", "--rate", "1000"]
        PROFILE.extend(["--output", str(args.profile), "--"])
    reps = args.reps or (1 if args.quick else 3)
    servers = args.servers.split(",")
    if "ncat" in servers and shutil.which("ncat") is None:
        parser.error("ncat is not installed (Debian: apt-get install ncat)")
    if "ngircd" in servers and not Path(NGIRCD).exists():
        parser.error("ngircd is not installed (Debian: apt-get install ngircd)")
    info = machine()
    print(f"# triochat benchmark ({'quick' if args.quick else 'full'}, median of {reps})\n")
    for key, value in info.items():
        print(f"- {key}: {value}")
    report: dict[str, Any] = {"machine": info, "reps": reps, "results": []}
    began = time.monotonic()
    for section, label, function, params, fixed_reps, kinds in plan(args.quick, args.clients):
        if args.only and section not in args.only:
            continue
        if args.label and not any(part in label for part in args.label):
            continue
        results: dict[str, Any] = {}
        for kind in [k for k in servers if k in kinds]:
            runs: list[dict[str, Any]] = []
            for _ in range(min(reps, fixed_reps or reps)):
                try:
                    runs.append(function(kind, params, args.workers))
                except (loadgen.LoadError, RuntimeError) as exc:
                    print(f"\n{kind} {section} {label}: FAILED: {exc}", file=sys.stderr)
            results[kind] = {"median": median_of(runs) if runs else None, "runs": runs}
        report["results"].append(
            {"section": section, "label": label, "params": params, "servers": results}
        )
        if args.json:  # after every section, so a long run that is cut short keeps its numbers
            args.json.write_text(json.dumps(report, indent=2))
        print_table(section, label, results)
    print(f"\n(total {time.monotonic() - began:.0f} s)")
    return 0


def print_table(section: str, label: str, results: dict[str, Any]) -> None:
    medians = {k: v["median"] for k, v in results.items() if v["median"]}
    if not medians:
        print(f"\n## {section}: {label}\n\nno results")
        return
    keys = list(next(iter(medians.values())).keys())
    pairs = [(k, r) for k, r in REFERENCE.items() if k in medians and r in medians]
    print(f"\n## {section}: {label}\n")
    heads = [*medians, *(f"{k} / {r}" for k, r in pairs)]
    print("| metric | " + " | ".join(heads) + " |")
    print("|---" * (len(heads) + 1) + "|")
    for key in keys:
        cells = [_fmt(medians[k][key]) for k in medians]
        for k, r in pairs:
            ref = medians[r][key]
            cells.append(f"{medians[k][key] / ref:.2f}" if ref else "")
        print(f"| {key} | " + " | ".join(cells) + " |")


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
