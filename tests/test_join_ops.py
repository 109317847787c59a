"""`triochat join` with TLS and a server password: line mode and the terminal UI."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from _ops import cli_env, running_server
from test_join_tty import Terminal

from triochat.client.connection import open_chat_client

OPTIONS: dict[str, Any] = {"password": "hunter2", "password_delay": 0.01}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return context, path


async def _join(
    port: int, *args: str, stdin: bytes = b"", password: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = cli_env()
    if password is not None:
        env["TRIOCHAT_PASSWORD"] = password
    return await trio.run_process(
        [sys.executable, "-m", "triochat", "join", "--port", str(port), "--name", "ann", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def test_line_mode_over_tls_with_the_password(tls: tuple[ssl.SSLContext, Path]) -> None:
    context, ca = tls
    with trio.fail_after(20):
        async with running_server(ssl_context=context, **OPTIONS) as (_, port):
            ben = await open_chat_client("127.0.0.1", port, ca=ca)
            await ben.register("ben", password="hunter2")
            result = await _join(
                port, "--ca", str(ca), stdin=b"hello over tls\n", password="hunter2"
            )
            assert result.returncode == 0, result.stderr
            assert b"<ann> hello over tls" in result.stdout
            while not (await ben.receive_line()).endswith("<ann> hello over tls"):
                pass
            await ben.aclose()


async def test_line_mode_password_missing_or_wrong_exits_5() -> None:
    with trio.fail_after(20):
        async with running_server(**OPTIONS) as (_, port):
            missing = await _join(port)
            assert missing.returncode == 5
            assert b"set TRIOCHAT_PASSWORD" in missing.stderr
            wrong = await _join(port, password="hunter3")
            assert wrong.returncode == 5
            assert b"wrong password" in wrong.stderr


async def test_line_mode_tls_mistakes_exit_3(tls: tuple[ssl.SSLContext, Path]) -> None:
    context, ca = tls
    with trio.fail_after(20):
        async with running_server() as (_, plain_port):
            result = await _join(plain_port, "--ca", str(ca))
            assert result.returncode == 3
            assert b"TLS handshake" in result.stderr
        async with running_server(ssl_context=context) as (_, port):
            untrusted = await _join(port, "--tls")
            assert untrusted.returncode == 3
            assert b"CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
            insecure = await _join(port, "--insecure", stdin=b"hi\n")
            assert insecure.returncode == 0
            assert b"warning: --insecure" in insecure.stderr
            assert b"Traceback" not in insecure.stderr


def test_the_terminal_ui_asks_for_the_password_without_echo(tmp_path: Path) -> None:
    env = cli_env()
    env["TRIOCHAT_PASSWORD"] = "s3cret-pw"
    server = subprocess.Popen(
        [sys.executable, "-m", "triochat", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert server.stdout is not None
        match = re.search(r":(\d+)$", server.stdout.readline().strip())
        assert match is not None
        term = Terminal(int(match[1]), "--name", "dora")
        try:
            term.wait_for("the password prompt", lambda: term.input_line == "password:")
            term.child.send("s3cret-pw")
            term.wait_for("the mask", lambda: term.input_line == "password: *********")
            assert "s3cret-pw" not in term.text
            term.child.send("\r")
            term.wait_text("* dora joined #lobby")
            term.child.send("\x04")
            assert term.exit_code_and_tty_restored() == 0
        finally:
            term.close()
    finally:
        server.terminate()
        server.wait(10)
        assert server.stdout is not None
        server.stdout.close()


async def test_bot_over_tls_with_the_password(tls: tuple[ssl.SSLContext, Path]) -> None:
    context, ca = tls
    command = [sys.executable, "-m", "triochat", "bot", "--script", "-", "--name", "tbot"]
    with trio.fail_after(20):
        async with running_server(ssl_context=context, **OPTIONS) as (_, port):
            env = cli_env()
            env["TRIOCHAT_PASSWORD"] = "hunter2"
            ok = await trio.run_process(
                [*command, "--port", str(port), "--ca", str(ca)],
                stdin=b"hello over tls\n@expect <tbot> hello over tls$\n",
                capture_stderr=True,
                check=False,
                env=env,
            )
            assert ok.returncode == 0, ok.stderr
            wrong = await trio.run_process(
                [*command, "--port", str(port), "--ca", str(ca), "--password", "nope"],
                stdin=b"hello\n",
                capture_stderr=True,
                check=False,
                env=cli_env(),
            )
            assert wrong.returncode == 1
            assert b"tbot: wrong password" in wrong.stderr
            assert b"Traceback" not in wrong.stderr
