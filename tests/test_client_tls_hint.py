"""What ``join --tls`` says when the TLS handshake fails: the hint fits the failure."""

from __future__ import annotations

import ssl

import pytest
import trio
import trustme
from _ops import running_server

from triochat.client.connection import ConnectFailed, open_chat_client


async def test_an_unverified_certificate_names_ca_and_insecure() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)  # a CA nobody trusts
    with trio.fail_after(10):
        async with running_server(ssl_context=context) as (_, port):
            with pytest.raises(ConnectFailed) as caught:
                await open_chat_client("127.0.0.1", port, tls=True)
    message = str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "--ca FILE" in message
    assert "--insecure" in message
    assert "does the server use TLS?" not in message


async def test_a_plain_server_still_asks_whether_it_uses_tls() -> None:
    with trio.fail_after(10):
        async with running_server() as (_, port):
            with pytest.raises(ConnectFailed, match=r"\(does the server use TLS\?\)"):
                await open_chat_client("127.0.0.1", port, tls=True)
