"""The operator's view: ``triochat serve`` with TLS, a password and metrics, as a subprocess."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import trio
import trustme
from _ops import cli_env, start_cli

from triochat.client.connection import WrongPassword, open_chat_client


async def test_tls_password_and_metrics_from_the_command_line(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    env = cli_env()
    env["TRIOCHAT_PASSWORD"] = "hunter2"  # from the environment, so it is not in ps
    with trio.fail_after(20):
        proc, port = await start_cli(
            "--tls-cert",
            str(tmp_path / "cert.pem"),
            "--tls-key",
            str(tmp_path / "key.pem"),
            "--metrics-port",
            "0",
            "--max-per-address",
            "10",
            env=env,
        )
        try:
            banner: str = proc.banner  # type: ignore[attr-defined]
            match = re.search(r"triochat metrics on http://([\d.]+):(\d+)/metrics", banner)
            assert match is not None
            ann = await open_chat_client("127.0.0.1", port, ca=tmp_path / "ca.pem")
            await ann.register("ann", password="hunter2")
            await ann.send_line("over tls")
            assert (await ann.receive_line()).endswith("<ann> over tls")
            eve = await open_chat_client("127.0.0.1", port, ca=tmp_path / "ca.pem")
            with pytest.raises(WrongPassword):
                await eve.register("eve", password="hunter3")
            await eve.aclose()

            stream = await trio.open_tcp_stream(match[1], int(match[2]))
            await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = b""
            while chunk := await stream.receive_some(65536):
                body += chunk
            await stream.aclose()
            assert b"triochat_lines_received_total 1.0" in body
            assert b"triochat_wrong_passwords_total 1.0" in body
            await ann.aclose()
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:  # pragma: no cover - only if the test failed
                proc.kill()
                await proc.wait()
