"""Prometheus metrics over HTTP: ``triochat serve --metrics-port PORT``.

Nothing is counted for metrics' sake: the hub, the server and the history
store keep plain integer counters anyway, and a collector reads them when
Prometheus scrapes. The HTTP endpoint is a tiny HTTP/1.0 responder on trio
sockets, run as a task in the server's trio run, so no other thread ever
touches the chat's state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Final

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from ..core.moderation import ACTIONS

if TYPE_CHECKING:
    from .listener import ChatServer
    from .web import WebDoor

log: Final = logging.getLogger("triochat.metrics")

MAX_REQUEST: Final = 8192
"""Bytes of request head read before giving up on a client."""
REQUEST_TIMEOUT: Final = 5.0
"""Seconds a scraper has to send its request and read the answer."""
MAX_SCRAPERS: Final = 16
"""Metrics connections served at once; more wait for a slot."""


class ChatCollector(Collector):
    """Reads a :class:`~triochat.server.ChatServer`'s counters at scrape time."""

    def __init__(self, server: ChatServer, web: WebDoor | None = None) -> None:
        self.server = server
        self.web = web

    def collect(self) -> Iterator[Metric]:
        server, hub, stats = self.server, self.server.hub, self.server.stats

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"triochat_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"triochat_{name}", doc, value=value)

        yield gauge("connected_clients", "Open client connections.", server.connections)
        yield gauge(
            "irc_connected_clients",
            "Open connections of the IRC door (--irc-port), among connected_clients.",
            stats.irc_connections,
        )
        if self.web is not None:
            yield gauge("web_clients", "Open WebSocket connections.", self.web.connections)
        yield gauge("registered_users", "Users who have given a name.", hub.members)
        yield gauge("rooms", "Rooms that exist now.", len(hub.rooms()))
        yield counter("lines_received", "Lines received from registered users.", hub.lines_in)
        yield counter("lines_delivered", "Lines queued to recipients.", hub.lines_out)
        yield counter("bytes_sent", "Bytes written to clients.", stats.bytes_out)
        yield counter(
            "slow_consumers", "Clients dropped for not reading fast enough.", hub.slow_evictions
        )
        yield counter(
            "flood_delays", "Times flood control paused a client's reader.", stats.flood_delays
        )
        yield gauge(
            "send_queue_high_water",
            "Most lines ever waiting for one client whose socket buffer was full.",
            stats.queue_high_water,
        )
        yield counter("refused_full", "Connections refused: server full.", stats.refused_full)
        yield counter(
            "refused_per_address",
            "Connections refused: too many from one address.",
            stats.refused_per_address,
        )
        yield counter(
            "tls_handshake_failures", "TLS handshakes that failed.", stats.tls_handshake_failures
        )
        yield counter("wrong_passwords", "Wrong passwords received.", stats.wrong_passwords)
        actions = CounterMetricFamily(
            "triochat_moderation_actions", "Moderation actions, by kind.", labels=["action"]
        )
        done = hub.moderation.actions
        for action in ACTIONS:
            actions.add_metric([action], done[action])
        yield actions
        if server.accounts is not None:
            yield gauge("accounts", "Registered names.", len(server.accounts))
        store = server.store
        if store is not None:
            yield counter("history_batches", "History write batches committed.", store.batches)
            yield counter("history_lines_saved", "History lines saved.", store.rows)
            yield counter(
                "history_lines_lost", "History lines that could not be saved.", store.dropped
            )
            yield gauge("history_pending", "History lines not yet committed.", store.pending)
            yield SummaryMetricFamily(
                "triochat_history_write_seconds",
                "Time to commit one history batch.",
                count_value=store.batches,
                sum_value=store.write_seconds,
            )
            yield gauge(
                "history_write_seconds_max",
                "Longest history batch commit.",
                store.write_seconds_max,
            )


def make_registry(server: ChatServer, web: WebDoor | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChatCollector(server, web))
    return registry


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def handle_scrape(
    registry: CollectorRegistry, limiter: trio.CapacityLimiter, stream: trio.abc.Stream
) -> None:
    """Answer one HTTP request: ``GET /metrics`` (or ``/``) with the exposition text."""
    async with limiter:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                head = b""
                while b"\r\n\r\n" not in head and b"\n\n" not in head:
                    data = await stream.receive_some(MAX_REQUEST)
                    if not data:
                        break
                    head += data
                    if len(head) > MAX_REQUEST:
                        break
                request = head.split(b"\n", 1)[0].decode("latin-1").split()
                if len(request) < 2 or request[0] != "GET":
                    answer = _response("400 Bad Request", "text/plain", b"GET /metrics\n")
                elif request[1].split("?")[0] not in ("/metrics", "/"):
                    answer = _response("404 Not Found", "text/plain", b"try /metrics\n")
                else:
                    body = generate_latest(registry)
                    answer = _response("200 OK", CONTENT_TYPE_LATEST, body)
                await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            # A scrape must never take the chat down.
            log.exception("metrics request failed")
        finally:
            await trio.aclose_forcefully(stream)


async def serve_metrics(
    server: ChatServer,
    listeners: list[trio.SocketListener],
    *,
    web: WebDoor | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` for ``server`` (and its web door) on ``listeners`` until cancelled.

    ``task_status.started`` gets the listeners (open them with
    :func:`trio.open_tcp_listeners`; port 0 picks a free one).
    """
    registry = make_registry(server, web)
    handler = partial(handle_scrape, registry, trio.CapacityLimiter(MAX_SCRAPERS))
    await trio.serve_listeners(handler, listeners, task_status=task_status)
