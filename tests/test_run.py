"""``run_server`` called from a program: the whole server in a nursery, errors as StartError."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from triochat.client.connection import ChatClient, ConnectionClosed, open_chat_client
from triochat.server.listener import SHUTDOWN_LINE, ServerConfig
from triochat.server.run import RunningServer, ServeConfig, StartError, describe, run_server
from triochat.server.store import StoreConfig


def port_of(listeners: list[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def lines_until_closed(client: ChatClient) -> list[str]:
    lines = []
    while True:
        try:
            lines.append(await client.receive_line())
        except ConnectionClosed:
            return lines


async def test_a_program_runs_the_server_and_shuts_it_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triochat")
    config = ServeConfig(
        server=ServerConfig(port=0, rate=0, password="pw"),
        store=StoreConfig(path=tmp_path / "chat.db"),
        metrics_port=0,
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running: RunningServer = await nursery.start(run_server, config)
            assert len(running.metrics_listeners) == 1
            metrics_port = port_of(running.metrics_listeners)
            async with await open_chat_client("127.0.0.1", port_of(running.listeners)) as ann:
                await ann.register("ann", password="pw")
                await ann.send_line("hello")
                while not (await ann.receive_line()).endswith("<ann> hello"):
                    pass
                scrape = await trio.open_tcp_stream("127.0.0.1", metrics_port)
                await scrape.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
                body = b""
                while chunk := await scrape.receive_some():
                    body += chunk
                await scrape.aclose()
                assert b"triochat_lines_received_total 1.0" in body
                running.shutdown()
                assert await lines_until_closed(ann) == [f"* {SHUTDOWN_LINE}"]
        # run_server returned on its own after shutdown(): the nursery closed.
    metrics = f"metrics on http://127.0.0.1:{metrics_port}/metrics"
    assert (
        f"serving with TLS off, password required, history in {tmp_path / 'chat.db'}, "
        f"no Redis (single node), {metrics}"
    ) in caplog.text
    assert "pw" not in caplog.text.replace("password", "")


async def test_an_address_in_use_is_a_start_error_before_started() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartError, match=f"cannot listen on 127.0.0.1:{port}: "):
                await nursery.start(run_server, ServeConfig(server=ServerConfig(port=port)))


async def test_a_bad_database_is_a_start_error_and_closes_the_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "chat.db"
    db.write_bytes(b"not a database" * 100)
    opened: list[trio.SocketListener] = []
    open_tcp_listeners = trio.open_tcp_listeners

    async def remember(*args: Any, **kwargs: Any) -> list[trio.SocketListener]:
        listeners = await open_tcp_listeners(*args, **kwargs)
        opened.extend(listeners)
        return listeners

    monkeypatch.setattr(trio, "open_tcp_listeners", remember)
    config = ServeConfig(server=ServerConfig(port=0), store=StoreConfig(path=db))
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError, match=r"cannot use history database .*not a database"):
            await nursery.start(run_server, config)
    # The listener opened before the store was tried is closed again.
    assert opened
    assert all(listener.socket.fileno() == -1 for listener in opened)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


async def test_a_certificate_without_its_key_says_so(certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    config = ServeConfig(server=ServerConfig(port=0), tls_cert=cert)
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError) as caught:
            await nursery.start(run_server, config)
    assert str(caught.value) == f"no private key in {cert}; give --tls-key"


async def test_a_key_that_does_not_match_is_reported(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _ = certificate
    other = tmp_path / "other.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    config = ServeConfig(server=ServerConfig(port=0), tls_cert=cert, tls_key=other)
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError, match=f"cannot load TLS certificate {cert}: "):
            await nursery.start(run_server, config)


async def test_tls_in_one_file_is_served(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    config = ServeConfig(server=ServerConfig(port=0), tls_cert=both)
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(run_server, config)
        assert running.chat.ssl_context is not None
        running.shutdown()


def test_a_key_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="tls_key needs tls_cert"):
        ServeConfig(tls_key=Path("key.pem"))


def test_the_start_up_line_keeps_redis_secrets_out_of_the_log() -> None:
    from triochat.backplane.redis import RedisOptions

    config = ServeConfig(redis=RedisOptions(url="redis://user:secret@db.example:6380/2"))
    assert describe(config, []) == (
        "serving with TLS off, no password, history in memory, "
        "Redis redis://db.example:6380/2 cluster triochat, no metrics"
    )


async def test_the_start_up_line_names_the_irc_door_s_real_address() -> None:
    from triochat.server.irc import IRCConfig

    config = ServeConfig(server=ServerConfig(port=0), irc=IRCConfig(port=0))
    async with trio.open_nursery() as nursery:
        running: RunningServer = await nursery.start(run_server, config)
        (listener,) = running.irc_listeners
        port = listener.socket.getsockname()[1]
        line = describe(config, [], running.web_urls, running.irc_listeners)
        assert line.endswith(f"the IRC door on 127.0.0.1:{port}")
        assert port != 0
        running.shutdown()
