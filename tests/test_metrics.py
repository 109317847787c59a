"""Metrics: scrape the Prometheus endpoint during a chat and watch the counters move."""

from __future__ import annotations

from pathlib import Path

import trio
from _ops import running_server
from prometheus_client.parser import text_string_to_metric_families

from triochat.client.connection import open_chat_client
from triochat.server.metrics import serve_metrics


async def _get(port: int, path: str = "/metrics", method: str = "GET") -> tuple[str, str]:
    """A minimal HTTP/1.0 request; returns the status line and the body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.splitlines()[0], body


async def _scrape(port: int) -> dict[str, float]:
    status, body = await _get(port)
    assert status == "HTTP/1.0 200 OK"
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


async def test_counters_move_during_a_chat(tmp_path: Path, nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        async with running_server(db=tmp_path / "chat.db", rate=20, burst=1) as (server, port):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            await nursery.start(serve_metrics, server, listeners)
            metrics_port = listeners[0].socket.getsockname()[1]

            before = await _scrape(metrics_port)
            assert before["triochat_connected_clients"] == 0
            assert before["triochat_lines_received_total"] == 0

            ann = await open_chat_client("127.0.0.1", port)
            await ann.register("ann")
            ben = await open_chat_client("127.0.0.1", port)
            await ben.register("ben")
            await ann.send_line("/join #dev")
            await ann.send_line("hello")  # paced: flood control with burst 1
            while not (await ann.receive_line()).endswith("<ann> hello"):
                pass
            await ann.send_line("/history 5")
            while not (await ann.receive_line()).startswith("* End of history"):
                pass

            during = await _scrape(metrics_port)
            assert during["triochat_connected_clients"] == 2
            assert during["triochat_registered_users"] == 2
            assert during["triochat_rooms"] == 2
            assert during["triochat_lines_received_total"] == 3
            assert (
                during["triochat_lines_delivered_total"] > before["triochat_lines_delivered_total"]
            )
            assert during["triochat_bytes_sent_total"] > 0
            assert during["triochat_flood_delays_total"] >= 1
            # Both read at once, so the kernel took every line: nothing ever waited.
            assert during["triochat_send_queue_high_water"] == 0
            assert during["triochat_history_batches_total"] >= 1
            assert during["triochat_history_lines_saved_total"] == 1
            assert during["triochat_history_write_seconds_count"] >= 1
            assert during["triochat_slow_consumers_total"] == 0

            await ann.aclose()
            await ben.aclose()
            nursery.cancel_scope.cancel()


async def test_other_paths_and_methods(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        async with running_server() as (server, _):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            await nursery.start(serve_metrics, server, listeners)
            port = listeners[0].socket.getsockname()[1]
            assert (await _get(port, "/nope"))[0] == "HTTP/1.0 404 Not Found"
            status, body = await _get(port, "/")
            assert status == "HTTP/1.0 200 OK"
            assert "triochat_history" not in body  # no store, no history metrics
            # Anything but GET gets a 400, as docs/operations.md says; HEAD included.
            for method in ("HEAD", "POST", "PUT", "get"):
                status, body = await _get(port, "/metrics", method)
                assert (status, body) == ("HTTP/1.0 400 Bad Request", "GET /metrics\n")
            # A client that sends garbage gets a 400, and the endpoint carries on.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"\x16\x03\x01garbage\r\n\r\n")
            assert (await stream.receive_some(100)).startswith(b"HTTP/1.0 400")
            await stream.aclose()
            assert (await _get(port))[0] == "HTTP/1.0 200 OK"
            nursery.cancel_scope.cancel()
