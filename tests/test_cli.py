"""``triochat serve`` as a user runs it: a real process, real signals, real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from triochat.cli import main, serve as serve_cli
from triochat.client.connection import ChatClient, ConnectionClosed, open_chat_client
from triochat.server.listener import SHUTDOWN_LINE
from triochat.server.run import ServeConfig
from triochat.server.store import StoreConfig

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"triochat listening on 127\.0\.0\.1:(\d+)")
WAIT = 10


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without TRIOCHAT_* settings, with the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOCHAT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def serve_command(*args: str, nofile: tuple[int, int] | None = None) -> list[str]:
    """``python -m triochat serve ARGS``, optionally under a given open-file limit."""
    if nofile is None:
        return [sys.executable, "-m", "triochat", "serve", *args]
    wrapper = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, {nofile}); "
        "sys.argv[0] = 'triochat'; "
        "runpy.run_module('triochat', run_name='__main__')"
    )
    return [sys.executable, "-c", wrapper, "serve", *args]


@dataclass
class ServeProcess:
    process: trio.Process
    port: int = 0
    stderr: bytearray = field(default_factory=bytearray)
    stderr_closed: trio.Event = field(default_factory=trio.Event)

    def signal(self, signum: signal.Signals) -> float:
        """Send ``signum``; return when, on the trio clock."""
        self.process.send_signal(signum)
        return trio.current_time()

    async def exit_code(self, deadline: float) -> int:
        """Wait for the exit, and for the last of stderr to be read."""
        with trio.fail_at(deadline):
            code = await self.process.wait()
            await self.stderr_closed.wait()
            return code


StartServe = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
async def start_serve(nursery: trio.Nursery) -> AsyncIterator[StartServe]:
    """``await start_serve("--rate", "0")``: ``triochat serve --port 0 ...``, once it listens.

    ``env`` adds environment variables; ``nofile`` sets the open-file limit (soft, hard).
    """
    processes: list[trio.Process] = []

    async def drain(stream: trio.abc.ReceiveStream, serve: ServeProcess) -> None:
        async for chunk in stream:
            serve.stderr += chunk
        serve.stderr_closed.set()

    async def start(
        *args: str, env: dict[str, str] | None = None, nofile: tuple[int, int] | None = None
    ) -> ServeProcess:
        env = env or {}
        if "--port" not in args and "TRIOCHAT_PORT" not in env:
            args = ("--port", "0", *args)
        process = await trio.lowlevel.open_process(
            serve_command(*args, nofile=nofile),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(**env),
        )
        processes.append(process)
        serve = ServeProcess(process)
        assert process.stdout is not None
        assert process.stderr is not None
        nursery.start_soon(drain, process.stderr, serve)
        stdout = b""
        with trio.fail_after(WAIT):
            while b"\n" not in stdout:
                chunk = await process.stdout.receive_some()
                assert chunk, f"exited early: {serve.stderr.decode()}"
                stdout += chunk
        match = LISTENING.fullmatch(stdout.decode().strip())
        assert match, stdout
        serve.port = int(match[1])
        return serve

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def receive(client: ChatClient) -> str:
    with trio.fail_after(WAIT):
        return await client.receive_line()


async def receive_until_eof(client: ChatClient) -> list[str]:
    lines = []
    with trio.fail_after(WAIT):
        while True:
            try:
                lines.append(await client.receive_line())
            except ConnectionClosed:
                return lines


async def test_serve_chat_then_sigterm_with_a_client_that_never_reads(
    start_serve: StartServe,
) -> None:
    serve = await start_serve("--rate", "0", "--max-line", "1000000", "--send-queue", "100000")
    port = serve.port
    async with (
        await open_chat_client("127.0.0.1", port) as ann,
        await open_chat_client("127.0.0.1", port) as ben,
        await open_chat_client("127.0.0.1", port) as unnamed,
    ):
        await ann.register("ann")
        await ben.register("ben")
        assert (await receive(ann)).endswith("] * ben joined #lobby")
        await ann.send_line("secret words")
        assert (await receive(ben)).endswith("] <ann> secret words")
        assert (await receive(ann)).endswith("] <ann> secret words")

        # A client that never reads, alone in its room: 8 MB of its own lines
        # come back to it, far more than its socket's buffers on either side
        # hold, so the server's writer for it is stuck in send_all.
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        async with ChatClient(trio.SocketStream(sock)) as void:
            await void.register("void")
            await void.send_line("/join #void")
            lines = b"".join(b"%d %s\n" % (i, b"v" * 999_000) for i in range(8))
            with trio.fail_after(WAIT):
                await void.stream.send_all(lines + b"/msg ann filled\n")
                while not (await receive(ann)).endswith("*void* filled"):
                    pass

            sent = serve.signal(signal.SIGTERM)
            for client in (ann, ben, unnamed):
                lines_left = await receive_until_eof(client)
                assert lines_left[-1] == f"* {SHUTDOWN_LINE}"
            assert await serve.exit_code(deadline=sent + 3) == 0
    stderr = serve.stderr.decode()
    assert "received SIGTERM" in stderr
    assert "Traceback" not in stderr
    assert "secret words" not in stderr  # message texts are not logged at info level


async def test_sigint_exits_cleanly(start_serve: StartServe) -> None:
    serve = await start_serve()
    async with await open_chat_client("127.0.0.1", serve.port) as ann:
        await ann.register("ann")
        sent = serve.signal(signal.SIGINT)
        assert await receive_until_eof(ann) == [f"* {SHUTDOWN_LINE}"]
    assert await serve.exit_code(deadline=sent + 3) == 0
    stderr = serve.stderr.decode()
    assert "received SIGINT" in stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_options_come_from_the_environment(start_serve: StartServe) -> None:
    port = free_port()
    serve = await start_serve(env={"TRIOCHAT_PORT": str(port), "TRIOCHAT_MAX_CLIENTS": "1"})
    assert serve.port == port
    async with (
        await open_chat_client("127.0.0.1", port) as ann,
        await open_chat_client("127.0.0.1", port) as extra,
    ):
        await ann.register("ann")
        assert await receive_until_eof(extra) == ["! Server full, try again later"]
    sent = serve.signal(signal.SIGTERM)
    assert await serve.exit_code(deadline=sent + 3) == 0


async def test_a_full_db_queue_delivers_lines_but_does_not_save_them(
    start_serve: StartServe, tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    serve = await start_serve(
        "--rate", "0", "--db", str(db), "--db-queue", "3", "--db-batch-max", "1"
    )
    # Hold the file's write lock: the server's writer takes one line (a batch
    # of --db-batch-max 1) and then waits on the lock, so the queue fills.
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        async with await open_chat_client("127.0.0.1", serve.port) as ann:
            await ann.register("ann")
            await ann.stream.send_all(b"".join(b"line %d\n" % i for i in range(10)))
            for i in range(10):  # every line is still delivered
                assert (await receive(ann)).endswith(f"] <ann> line {i}")
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    sent = serve.signal(signal.SIGTERM)
    assert await serve.exit_code(deadline=sent + WAIT) == 0
    stderr = serve.stderr.decode()
    assert (
        "history writer is behind (--db-queue 3 full): lines are delivered but not saved,"
        " 1 so far" in stderr
    )
    closed = re.search(r"history database closed: (\d+) lines saved, (\d+) lost", stderr)
    assert closed, stderr
    saved, lost = int(closed[1]), int(closed[2])
    # One line in the writer's hands and 3 queued at most: at least 6 lost.
    assert lost >= 6
    assert saved + lost == 10
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == saved


async def run(args: Sequence[str], **options: Any) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(WAIT):
        return await trio.run_process(
            list(args), capture_stdout=True, capture_stderr=True, check=False, **options
        )


async def test_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run(serve_command("--port", str(port)), env=child_env())
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def open_files_soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs /proc")
async def test_open_file_limit_is_raised_for_max_clients(start_serve: StartServe) -> None:
    serve = await start_serve("--max-clients", "500", nofile=(100, 4096))
    assert open_files_soft_limit(serve.process.pid) >= 500
    assert "lowering --max-clients" not in serve.stderr.decode()


async def test_max_clients_is_lowered_with_a_warning_when_the_hard_limit_is_too_low(
    start_serve: StartServe,
) -> None:
    serve = await start_serve("--max-clients", "10000", nofile=(100, 200))
    with trio.fail_after(WAIT):
        while b"lowering" not in serve.stderr:  # noqa: ASYNC110 - the log arrives when it does
            await trio.sleep(0.01)
    assert "open-file limit is 200: lowering --max-clients from 10000 to 136" in (
        serve.stderr.decode()
    )


# --- option validation, in-process -----------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "Invalid value for '--port'"),
        (["--port", "seven"], "Invalid value for '--port'"),
        (["--max-line", "10"], "Invalid value for '--max-line'"),
        (["--history", "-1"], "Invalid value for '--history'"),
        (["--max-clients", "0"], "Invalid value for '--max-clients'"),
        (["--rate", "-1"], "Invalid value for '--rate'"),
        (["--rate", "nan"], "Invalid value for '--rate': nan is not in the range x>=0."),
        (["--registration-timeout", "nan"], "Invalid value for '--registration-timeout': nan"),
        (["--tls-handshake-timeout", "nan"], "Invalid value for '--tls-handshake-timeout': nan"),
        (["--burst", "0"], "Invalid value for '--burst'"),
        (["--registration-timeout", "0"], "Invalid value for '--registration-timeout'"),
        (["--send-queue", "100", "--history", "95"], "must exceed --history by more than 8"),
        (["--log-level", "loud"], "Invalid value for '--log-level'"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", *args], env={"TRIOCHAT_PORT": None})
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["join", "--name", "ann", "--connect-timeout", "nan"],
        ["join", "--name", "ann", "--quit-timeout", "nan"],
        ["bot", "--script", "-", "--rate", "nan"],
        ["bot", "--script", "-", "--connect-timeout", "nan"],
    ],
)
def test_client_options_refuse_nan(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, input="")
    assert result.exit_code == 2, result.output
    assert "nan is not in the range" in result.output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--db-batch-interval", "0"], "'--db-batch-interval': 0.0 is not in the range 0<x<=10."),
        (["--db-batch-interval", "11"], "'--db-batch-interval': 11.0 is not in the range 0<x<=10."),
        (["--db-batch-interval", "nan"], "'--db-batch-interval': nan is not in the range 0<x<=10."),
        (["--db-batch-interval", "inf"], "'--db-batch-interval': inf is not in the range 0<x<=10."),
        (["--db-batch-max", "0"], "'--db-batch-max': 0 is not in the range x>=1."),
        (["--db-queue", "-5"], "'--db-queue': -5 is not in the range x>=1."),
        (["--db-queue", "lots"], "'--db-queue': 'lots' is not a valid integer range."),
        (["--db-cache-rooms", "0"], "'--db-cache-rooms': 0 is not in the range x>=1."),
    ],
)
def test_bad_db_limits_are_one_line_errors(args: list[str], error: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--db", str(tmp_path / "chat.db"), *args])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: Invalid value for {error}"
    assert not (tmp_path / "chat.db").exists()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[StoreConfig | None]:
    """Stub out the server: each ``serve`` run records the StoreConfig it would use."""
    configs: list[StoreConfig | None] = []

    async def record(config: ServeConfig) -> None:
        configs.append(config.store)

    monkeypatch.setattr(serve_cli, "_serve", record)
    return configs


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (["--db-queue", "100"], {}, "'--db-queue': applies only with --db"),
        (
            [],
            {"TRIOCHAT_DB_CACHE_ROOMS": "5"},
            "'--db-cache-rooms': set by TRIOCHAT_DB_CACHE_ROOMS, but applies only with --db",
        ),
        (["--heartbeat", "1"], {}, "'--heartbeat': applies only with --redis"),
        (["--cluster", "chat"], {}, "'--cluster': applies only with --redis"),
        (
            [],
            {"TRIOCHAT_NODE_TTL": "3"},
            "'--node-ttl': set by TRIOCHAT_NODE_TTL, but applies only with --redis",
        ),
    ],
)
def test_settings_of_a_feature_that_is_off_are_an_error(
    args: list[str], env: dict[str, str], error: str, served: list[StoreConfig | None]
) -> None:
    result = CliRunner().invoke(
        main, ["serve", *args], env={"TRIOCHAT_DB": None, "TRIOCHAT_REDIS": None, **env}
    )
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: Invalid value for {error}"
    assert served == []


DB_LIMITS = StoreConfig(
    path=Path("chat.db"), history=7, batch_interval=0.5, batch_max=20, queue=30, cache_rooms=40
)


def test_db_limits_reach_the_store_config(served: list[StoreConfig | None]) -> None:
    args = ["--db", "chat.db", "--history", "7", "--db-batch-interval", "0.5"]
    args += ["--db-batch-max", "20", "--db-queue", "30", "--db-cache-rooms", "40"]
    result = CliRunner().invoke(main, ["serve", "--max-clients", "1", *args])
    assert result.exit_code == 0, result.output
    assert served == [DB_LIMITS]


def test_the_moderation_queue_reaches_the_store_config(
    served: list[StoreConfig | None],
) -> None:
    args = ["--db", "chat.db", "--db-moderation-queue", "5"]
    result = CliRunner().invoke(main, ["serve", "--max-clients", "1", *args])
    assert result.exit_code == 0, result.output
    assert served == [StoreConfig(path=Path("chat.db"), moderation_queue=5)]


def test_db_limits_come_from_the_environment(served: list[StoreConfig | None]) -> None:
    env = {
        "TRIOCHAT_DB": "chat.db",
        "TRIOCHAT_HISTORY": "7",
        "TRIOCHAT_DB_BATCH_INTERVAL": "0.5",
        "TRIOCHAT_DB_BATCH_MAX": "20",
        "TRIOCHAT_DB_QUEUE": "30",
        "TRIOCHAT_DB_CACHE_ROOMS": "40",
    }
    result = CliRunner().invoke(main, ["serve", "--max-clients", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert served == [DB_LIMITS]


def test_db_limit_defaults_are_the_store_defaults(served: list[StoreConfig | None]) -> None:
    for args in (["--db", "chat.db"], []):
        result = CliRunner().invoke(
            main, ["serve", "--max-clients", "1", *args], env={"TRIOCHAT_DB": None}
        )
        assert result.exit_code == 0, result.output
    assert served == [StoreConfig(path=Path("chat.db")), None]


def test_a_bad_environment_value_is_reported_like_an_option() -> None:
    result = CliRunner().invoke(main, ["serve"], env={"TRIOCHAT_PORT": "seven"})
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.output


def test_help_lists_every_option() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--max-line",
        "--history",
        "--max-clients",
        "--rate",
        "--registration-timeout",
        "--db",
        "--db-batch-interval",
        "--db-batch-max",
        "--db-queue",
        "--db-cache-rooms",
        "--log-level",
    ):
        assert option in result.output
    top = CliRunner().invoke(main, ["--help"])
    assert top.exit_code == 0
    assert "serve" in top.output


async def test_start_up_logs_what_is_on_beside_the_unchanged_listening_line(
    start_serve: StartServe, tmp_path: Path
) -> None:
    # start_serve checks that stdout's first line is exactly the listening line.
    db = tmp_path / "chat.db"
    serve = await start_serve("--db", str(db), env={"TRIOCHAT_PASSWORD": "sesame"})
    with trio.fail_after(WAIT):
        while b"serving with" not in serve.stderr:  # noqa: ASYNC110 - the log arrives when it does
            await trio.sleep(0.01)
    sent = serve.signal(signal.SIGTERM)
    assert await serve.exit_code(deadline=sent + 3) == 0
    stderr = serve.stderr.decode()
    assert (
        f"triochat: serving with TLS off, password required, history in {db}, "
        "no Redis (single node), no metrics\n"
    ) in stderr
    assert "sesame" not in stderr


def test_a_certificate_without_a_key_is_a_one_line_error(tmp_path: Path) -> None:
    import trustme

    cert = tmp_path / "cert.pem"
    trustme.CA().issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(cert))
    result = CliRunner().invoke(
        main, ["serve", "--port", "0", "--tls-cert", str(cert)], env={"TRIOCHAT_TLS_KEY": None}
    )
    assert result.exit_code == 1
    assert result.output == f"Error: no private key in {cert}; give --tls-key\n"
