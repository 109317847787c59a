"""TLS: trustme certificates, verified and unverified clients, clients speaking the wrong thing."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trio
import trustme
from _ops import running_server

from triochat.client.connection import (
    ConnectFailed,
    ConnectionClosed,
    ConnectOptions,
    InsecureConnectionWarning,
    open_chat_client,
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_tls_clients_chat(server_context: ssl.SSLContext, ca_file: Path) -> None:
    with trio.fail_after(10):
        async with running_server(ssl_context=server_context) as (server, port):
            ann = await open_chat_client("127.0.0.1", port, ca=ca_file)
            await ann.register("ann")
            ben = await open_chat_client("127.0.0.1", port, ca=str(ca_file))
            await ben.register("ben")
            assert isinstance(ann.stream, trio.SSLStream)
            assert (await ann.receive_line()).endswith("* ben joined #lobby")
            await ben.send_line("secret hello")
            assert (await ann.receive_line()).endswith("<ben> secret hello")
            assert await ann.quit() == ["* Bye!"]
            await ann.aclose()
            assert server.stats.tls_handshake_failures == 0
            await ben.aclose()


async def test_plain_client_on_a_tls_port_fails_cleanly(
    server_context: ssl.SSLContext, ca_file: Path
) -> None:
    with trio.fail_after(10):
        async with running_server(ssl_context=server_context) as (server, port):
            plain = await open_chat_client("127.0.0.1", port)
            with pytest.raises(ConnectionClosed, match="speaks TLS only"):
                await plain.register("ann")
            await plain.aclose()
            assert server.stats.tls_handshake_failures == 1
            # nc sees why, in plain text.
            raw = await trio.open_tcp_stream("127.0.0.1", port)
            await raw.send_all(b"ann\n")
            assert await raw.receive_some(1000) == (
                b"! This server speaks TLS only: connect with TLS (triochat join --tls)\n"
            )
            await raw.aclose()
            assert server.stats.tls_handshake_failures == 2
            # The server is unharmed.
            good = await open_chat_client("127.0.0.1", port, ca=ca_file)
            await good.register("ann")
            await good.aclose()


async def test_tls_client_on_a_plain_port_fails_cleanly(ca_file: Path) -> None:
    with trio.fail_after(10):
        async with running_server() as (_, port):
            with pytest.raises(ConnectFailed, match=r"TLS handshake .* failed"):
                await open_chat_client("127.0.0.1", port, ca=ca_file)


async def test_an_untrusted_certificate_is_refused(server_context: ssl.SSLContext) -> None:
    with trio.fail_after(10):
        async with running_server(ssl_context=server_context) as (_, port):
            # The system trust store does not know the test CA.
            with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await open_chat_client("127.0.0.1", port, tls=True)


async def test_insecure_skips_verification_with_a_warning(server_context: ssl.SSLContext) -> None:
    with trio.fail_after(10):
        async with running_server(ssl_context=server_context) as (_, port):
            with pytest.warns(InsecureConnectionWarning, match="verification is off"):
                client = await open_chat_client("127.0.0.1", port, insecure=True)
            await client.register("ann")
            await client.aclose()


async def test_connect_options_open_a_verified_client(
    server_context: ssl.SSLContext, ca_file: Path
) -> None:
    with trio.fail_after(10):
        async with running_server(ssl_context=server_context) as (_, port):
            options = ConnectOptions(port=port, ca=str(ca_file))
            async with await options.open_client() as client:
                assert isinstance(client.stream, trio.SSLStream)
                await client.register("ann")
            with pytest.raises(ConnectFailed, match="TLS handshake"):
                await ConnectOptions(port=port, tls=True).open_client()


def test_connect_options_name_the_server() -> None:
    assert ConnectOptions().server == "127.0.0.1:7007"
    assert ConnectOptions(host="::1", port=7008).server == "[::1]:7008"


async def test_a_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConnectFailed, match="cannot load CA file"):
        await open_chat_client("127.0.0.1", 1, ca=tmp_path / "nope.pem")


async def test_a_silent_handshake_times_out_without_holding_others(
    server_context: ssl.SSLContext, ca_file: Path
) -> None:
    with trio.fail_after(10):
        async with running_server(ssl_context=server_context, tls_handshake_timeout=0.3) as (
            server,
            port,
        ):
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            # Others connect and chat while the silent one holds its handshake.
            ann = await open_chat_client("127.0.0.1", port, ca=ca_file)
            await ann.register("ann")
            await ann.send_line("hi")
            assert (await ann.receive_line()).endswith("<ann> hi")
            # Then the server gives up on the silent one and hangs up.
            assert await silent.receive_some(100) == b""
            assert server.stats.tls_handshake_failures == 1
            await silent.aclose()
            await ann.aclose()


async def test_refusals_reach_a_tls_client_over_tls(
    server_context: ssl.SSLContext, ca_file: Path
) -> None:
    with trio.fail_after(10):
        async with running_server(ssl_context=server_context, max_per_address=1) as (_, port):
            ann = await open_chat_client("127.0.0.1", port, ca=ca_file)
            await ann.register("ann")
            extra = await open_chat_client("127.0.0.1", port, ca=ca_file)
            assert await extra.receive_line() == "! Too many connections from your address"
            with pytest.raises(ConnectionClosed):
                await extra.receive_line()
            await extra.aclose()
            await ann.aclose()


def _read_to_the_end(port: int, ca_file: Path, send: bytes) -> tuple[bytes, str]:
    """A blocking stdlib TLS client, as strict as ``openssl s_client`` about its end.

    Returns what it read and how the stream ended: ``"close_notify"`` for a clean
    TLS end, else the error (a bare TCP close is an ``SSLEOFError``).
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(send)
        data = b""
        try:
            while chunk := tls.recv(65536):
                data += chunk
        except ssl.SSLError as error:
            return data, repr(error)
        return data, "close_notify"


async def test_the_server_ends_tls_with_close_notify(
    server_context: ssl.SSLContext, ca_file: Path
) -> None:
    with trio.fail_after(10):
        async with running_server(ssl_context=server_context, max_per_address=1) as (_, port):
            data, end = await trio.to_thread.run_sync(
                _read_to_the_end, port, ca_file, b"ann\n/quit\n"
            )
            assert data.endswith(b"* Bye!\n")
            assert end == "close_notify"
            # A refusal over TLS ends cleanly too.
            ann = await open_chat_client("127.0.0.1", port, ca=ca_file)
            await ann.register("ann")
            data, end = await trio.to_thread.run_sync(_read_to_the_end, port, ca_file, b"")
            assert data == b"! Too many connections from your address\n"
            assert end == "close_notify"
            await ann.aclose()
