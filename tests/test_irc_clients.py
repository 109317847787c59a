"""Real IRC clients against ``triochat serve --irc-port 0``, beside line-door users.

The ``irc`` package from PyPI (jaraco's, as bots use it) runs in a thread;
irssi from Debian runs in a tmux session, driven by ``send-keys`` and read
with ``capture-pane``. Both talk to a server started by the CLI, which must
print ``triochat irc listening on HOST:PORT``.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _ops import cli_env

from triochat.client.connection import ChatClient, open_chat_client

Action = Callable[[Any], None]


async def serve_both(*args: str) -> tuple[trio.Process, int, int]:
    """``triochat serve --port 0 --irc-port 0 ARGS``, once both doors are listening."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "triochat", "serve", "--port", "0", "--irc-port", "0",
         "--log-level", "error", *args],
        stdout=subprocess.PIPE,
        env=cli_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    buffer = b""
    with trio.fail_after(10):
        while b"triochat irc listening on " not in buffer or not buffer.endswith(b"\n"):
            data = await proc.stdout.receive_some(4096)
            assert data, f"server exited early: {buffer!r}"
            buffer += data
    text = buffer.decode()
    line = text.split("triochat listening on ")[1].splitlines()[0]
    irc_line = text.split("triochat irc listening on ")[1].splitlines()[0]
    return proc, int(line.rsplit(":", 1)[1]), int(irc_line.rsplit(":", 1)[1])


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, int]]:
    proc, line_port, irc_port = await serve_both("--rate", "0")
    try:
        yield line_port, irc_port
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:  # pragma: no cover
            proc.kill()
            await proc.wait()


async def line_user(port: int, name: str) -> ChatClient:
    client = await open_chat_client("127.0.0.1", port)
    await client.register(name)
    return client


async def line_until(client: ChatClient, ending: str) -> str:
    with trio.fail_after(20):
        while True:
            line = await client.receive_line()
            if line.endswith(ending):
                return line


# --- the irc package ----------------------------------------------------------------


def _irc_bot(
    port: int, seen: queue.Queue[tuple[str, str, list[str]]], todo: queue.Queue[Action | None]
) -> None:
    """A bot on the ``irc`` package's reactor: reports events, carries out ``todo``."""
    import irc.client

    reactor = irc.client.Reactor()
    connection = reactor.server().connect("127.0.0.1", port, "zoe", ircname="Zoe")

    def report(_: Any, event: Any) -> None:
        seen.put((event.type, str(event.source), [str(a) for a in event.arguments]))

    for kind in ("welcome", "join", "pubmsg", "action", "privmsg", "namreply", "part", "quit"):
        reactor.add_global_handler(kind, report)
    try:
        while True:
            reactor.process_once(0.02)
            try:
                action = todo.get_nowait()
            except queue.Empty:
                continue
            if action is None:
                return
            action(connection)
    finally:
        connection.close()


async def test_an_irc_library_bot_and_an_nc_user_chat(server: tuple[int, int]) -> None:
    line_port, irc_port = server
    bob = await line_user(line_port, "bob")
    seen: queue.Queue[tuple[str, str, list[str]]] = queue.Queue()
    todo: queue.Queue[Action | None] = queue.Queue()

    async def wait_for(kind: str) -> tuple[str, str, list[str]]:
        with trio.fail_after(20):
            while True:
                try:
                    event = seen.get_nowait()
                except queue.Empty:
                    await trio.sleep(0.01)  # the bot runs in its own thread
                    continue
                if event[0] == kind:
                    return event

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial_thread(_irc_bot, irc_port, seen, todo)  # the bot's own loop
        )
        await wait_for("welcome")
        todo.put(lambda c: c.join("#lobby"))
        names = await wait_for("namreply")
        assert names[2][-1].split() == ["bob", "zoe"]
        await line_until(bob, "* zoe joined #lobby")
        await bob.send_line("hello bot")
        said = await wait_for("pubmsg")
        assert said[1] == "bob!bob@triochat"
        assert said[2] == ["hello bot"]
        todo.put(lambda c: c.privmsg("#lobby", "hello nc"))
        await line_until(bob, "<zoe> hello nc")
        todo.put(lambda c: c.action("#lobby", "waves"))
        await line_until(bob, "* zoe waves")
        await bob.send_line("/me bows")
        acted = await wait_for("action")
        assert acted[2] == ["bows"]
        todo.put(lambda c: c.quit("off I go"))
        await line_until(bob, "* zoe left #lobby (off I go)")
        todo.put(None)
    await bob.aclose()


def partial_thread(fn: Callable[..., None], *args: Any) -> Callable[[], Any]:
    async def run() -> None:
        await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    return run


# --- irssi in tmux ------------------------------------------------------------------


def _need_irssi() -> None:
    """Skip without irssi and tmux, or fail under CI, where ``.ci/run`` installs them."""
    if shutil.which("irssi") is None or shutil.which("tmux") is None:
        reason = "needs irssi and tmux (apt-get install irssi tmux)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


class Tmux:
    """One tmux server of our own (its own socket), running one window."""

    def __init__(self, socket: Path) -> None:
        self.socket = str(socket)

    async def run(self, *args: str, check: bool = True) -> str:
        result = await trio.run_process(
            ["tmux", "-S", self.socket, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=check,
        )
        return result.stdout.decode(errors="replace")

    async def keys(self, text: str) -> None:
        await self.run("send-keys", "-t", "irc", "-l", text)
        await self.run("send-keys", "-t", "irc", "Enter")

    async def screen(self) -> str:
        return await self.run("capture-pane", "-p", "-t", "irc")

    async def until(self, text: str) -> str:
        """Poll the screen (irssi is another process) until it shows ``text``."""
        with trio.fail_after(20):
            while True:
                screen = await self.screen()
                if text in screen:
                    return screen
                await trio.sleep(0.1)


async def start_irssi(tmp_path: Path, *args: str) -> Tmux:
    """irssi as ``zoe`` in a tmux window of its own, with ``args`` (``-c HOST``: connect)."""
    home = tmp_path / "irssi"
    home.mkdir()
    (home / "config").write_text(
        'settings = { core = { real_name = "Zoe"; user_name = "zoe"; nick = "zoe"; }; '
        '"fe-common/core" = { autocreate_own_query = "no"; }; '
        # No client-side pacing (2.2 s a command by default), so the test is quick.
        '"irc/core" = { cmd_queue_speed = "0msec"; cmds_max_at_once = "100"; }; };\n'
    )
    tmux = Tmux(tmp_path / "tmux.sock")
    env = {"TERM": "xterm", "LANG": "C.UTF-8", "HOME": str(tmp_path)}
    await trio.run_process(
        ["tmux", "-S", tmux.socket, "new-session", "-d", "-s", "irc", "-x", "150", "-y", "40",
         "env", *(f"{k}={v}" for k, v in env.items()), "irssi", f"--home={home}", *args],
        env={**os.environ, **env},
    )  # fmt: skip
    return tmux


async def test_irssi_and_an_nc_user_chat(server: tuple[int, int], tmp_path: Path) -> None:
    _need_irssi()
    line_port, irc_port = server
    bob = await line_user(line_port, "bob")
    tmux = await start_irssi(tmp_path, "-c", "127.0.0.1", "-p", str(irc_port), "-n", "zoe")
    try:
        await tmux.until("Welcome to the triochat IRC network")
        await tmux.keys("/join #lobby")
        await line_until(bob, "* zoe joined #lobby")
        await tmux.until("bob")  # the names list
        # irssi then asks MODE #lobby, WHO #lobby and MODE #lobby b; all answered:
        await tmux.until("Join to #lobby was synced")
        await tmux.keys("hello from irssi")
        await line_until(bob, "<zoe> hello from irssi")
        await bob.send_line("hello irssi")
        await tmux.until("hello irssi")
        screen = await tmux.screen()
        # irssi showed its own line once: the server did not echo it back.
        assert screen.count("hello from irssi") == 1
        await tmux.keys("/quit bye now")
        await line_until(bob, "* zoe left #lobby (bye now)")
    finally:
        with trio.move_on_after(5):
            await tmux.run("kill-server", check=False)  # gone already once irssi quit
        await bob.aclose()


async def test_irssi_logs_in_with_sasl_as_the_docs_say(tmp_path: Path) -> None:
    _need_irssi()
    proc, line_port, irc_port = await serve_both("--rate", "0", "--db", str(tmp_path / "c.db"))
    owner = await line_user(line_port, "zoe")
    await owner.send_line("/register zoe-pw")
    await line_until(owner, "zoe is registered to you now")
    await owner.send_line("/quit")
    await owner.aclose()
    bob = await line_user(line_port, "bob")
    tmux = await start_irssi(tmp_path)
    try:
        await tmux.until("Irssi")
        # docs/irc.md's commands, without TLS.
        await tmux.keys(
            "/network add -sasl_username zoe -sasl_password zoe-pw -sasl_mechanism PLAIN triochat"
        )
        await tmux.keys(f"/server add -network triochat 127.0.0.1 {irc_port}")
        await tmux.keys("/connect triochat")
        await tmux.until("Welcome to the triochat IRC network")
        await tmux.keys("/join #lobby")
        # Logged in: the nick is zoe's own, not the alternative irssi takes after a 433.
        await line_until(bob, "* zoe joined #lobby")
        await tmux.keys("/quit")
    finally:
        with trio.move_on_after(5):
            await tmux.run("kill-server", check=False)
        await bob.aclose()
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()


async def test_irc_settings_without_irc_port_are_an_error() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "triochat", "serve", "--port", "0", "--irc-ping", "30"],
        env=cli_env(),
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"--irc-ping" in result.stderr
    assert b"applies only with --irc-port" in result.stderr
