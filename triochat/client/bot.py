"""Scripted users: run a parsed bot script as one or many bots, and measure.

Every bot is a task in one nursery (owned by :meth:`BotRunner.run`). A bot
connects and registers with :mod:`triochat.client`, then runs two tasks: a
receiver that reads every server line (so the server never finds the bot too
slow, and so echoes of the bot's own chat lines can be timed) and the script.
Whatever ends the script (its last line, a failed step, :meth:`BotRunner.stop`
on Ctrl-C), the bot says ``/quit`` and waits, for a bounded time, for the
server to hang up.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ..protocol import line as p
from .botscript import Expect, Send, Sleep, Step, describe
from .connection import (
    ChatClient,
    ConnectFailed,
    ConnectionClosed,
    ConnectOptions,
    NameRejected,
    PasswordRequired,
    WrongPassword,
)

# "[HH:MM:SS] <NAME> text": a chat line; the group is the sender. A server may
# put the date in the stamp ([YYYY-MM-DD HH:MM:SS]).
_STAMP: Final = r"\[(?:\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\]"
_CHAT_RE: Final = re.compile(rf"{_STAMP} <([^>\s]+)> ")
_RENAME_RE: Final = re.compile(rf"{_STAMP} \* (\S+) is now known as (\S+)$")


@dataclass(frozen=True, kw_only=True)
class BotConfig:
    """Everything ``triochat bot`` can be told; each limit is a named option."""

    connection: ConnectOptions = field(default_factory=ConnectOptions)
    """Where to connect; ``connection.connect_timeout`` also bounds registration."""
    name: str = "bot"
    count: int = 1
    """Bots to run; with more than one they are named NAME1..NAMEN."""
    loop: int = 1
    """Times each bot runs the script (a final ``/quit`` runs once, at the end)."""
    rate: float = 0.0
    """Lines a second each bot sends at most; 0 sends as fast as the script goes."""
    quit_timeout: float = 5.0
    """Seconds to wait for the server to hang up after ``/quit``."""
    expect_buffer: int = 10_000
    """Received lines kept for ``@expect``; beyond that the oldest are dropped."""

    def __post_init__(self) -> None:
        if self.count < 1 or self.loop < 1 or self.expect_buffer < 1:
            raise ValueError("count, loop and expect_buffer must be at least 1")
        if self.rate < 0 or self.connection.connect_timeout <= 0 or self.quit_timeout <= 0:
            raise ValueError("rate must be >= 0 and the timeouts positive")

    def names(self) -> list[str]:
        if self.count == 1:
            return [self.name]
        return [f"{self.name}{i}" for i in range(1, self.count + 1)]


@dataclass(frozen=True)
class BotFailure:
    """Why one bot failed; ``str()`` is the one line the CLI prints."""

    bot: str
    reason: str
    lineno: int | None = None
    step: str | None = None
    loop: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.lineno is not None:
            where = f" line {self.lineno}"
            if self.loop is not None:
                where += f" (loop {self.loop})"
            if self.step is not None:
                where += f" {self.step}"
            where += ":"
        return f"{self.bot}:{where} {self.reason}"


@dataclass
class _Counters:
    sent: int = 0
    received: int = 0
    latencies: list[float] = field(default_factory=list)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of sorted samples, by the nearest-rank method."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """What a run did; latencies are in seconds."""

    bots: int
    failures: list[BotFailure]
    sent: int
    received: int
    latencies: list[float]
    elapsed: float
    interrupted: bool

    @property
    def ok(self) -> int:
        return self.bots - len(self.failures)

    def latency(self) -> dict[str, float] | None:
        """p50, p90, p99 and max round-trip time in seconds, or None without samples."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return {
            "p50": percentile(ordered, 50),
            "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99),
            "max": ordered[-1],
        }

    def as_dict(self) -> dict[str, Any]:
        latency = self.latency()
        return {
            "bots": self.bots,
            "ok": self.ok,
            "failed": len(self.failures),
            "interrupted": self.interrupted,
            "sent": self.sent,
            "received": self.received,
            "elapsed_s": round(self.elapsed, 6),
            "latency_ms": {
                "samples": len(self.latencies),
                **({k: round(v * 1000, 3) for k, v in latency.items()} if latency else {}),
            },
            "failures": [
                {"bot": f.bot, "line": f.lineno, "loop": f.loop, "error": f.reason}
                for f in self.failures
            ],
        }

    def format(self) -> str:
        """The human summary printed on stderr."""
        state = ", interrupted" if self.interrupted else ""
        lines = [
            f"bots: {self.bots} ({self.ok} ok, {len(self.failures)} failed{state})"
            f" in {self.elapsed:.2f} s",
            f"lines: {self.sent} sent, {self.received} received",
        ]
        latency = self.latency()
        if latency is None:
            lines.append("latency: no chat lines echoed")
        else:
            values = ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in latency.items())
            lines.append(f"latency ({len(self.latencies)} own chat lines): {values}")
        return "\n".join(lines)


class _Bot:
    """One scripted user."""

    def __init__(
        self, name: str, steps: Sequence[Step], config: BotConfig, counters: _Counters
    ) -> None:
        self.name = name
        self.steps = steps
        self.config = config
        self.counters = counters
        self.stopped = False
        self._scope: trio.CancelScope | None = None
        self._inbox: deque[str] = deque(maxlen=config.expect_buffer)
        self._arrived = trio.Event()
        self._closed = trio.Event()
        self._sent_at: deque[float] = deque()  # own chat lines awaiting their echo
        self._next_send = -math.inf
        self._quit_sent = False

    def stop(self) -> None:
        """Interrupt whatever the bot is doing; it still says /quit."""
        self.stopped = True
        if self._scope is not None:
            self._scope.cancel()

    @contextmanager
    def _interruptible(self) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope()
        if self.stopped:
            scope.cancel()
        self._scope = scope
        try:
            with scope:
                yield scope
        finally:
            self._scope = None

    def _fail(self, reason: str, step: Step | None = None, loop: int | None = None) -> BotFailure:
        if step is None:
            return BotFailure(self.name, reason)
        loop = loop if self.config.loop > 1 else None
        return BotFailure(self.name, reason, step.lineno, f"({describe(step)})", loop)

    async def run(self) -> BotFailure | None:
        """Connect, register, run the script, quit. Returns None on success or interruption."""
        client: ChatClient | None = None
        with self._interruptible():
            try:
                client = await self.config.connection.open_client()
            except ConnectFailed as exc:
                return self._fail(str(exc))
        if client is None:
            return None
        async with client:
            return await self._session(client)

    async def _session(self, client: ChatClient) -> BotFailure | None:
        connection = self.config.connection
        registered = False
        with self._interruptible():
            try:
                with trio.fail_after(connection.connect_timeout):
                    await client.register(self.name, connection.password)
                registered = True
            except NameRejected as exc:
                return self._fail(f"name rejected: {exc}")
            except PasswordRequired:
                return self._fail("the server wants a password (--password or TRIOCHAT_PASSWORD)")
            except WrongPassword:
                return self._fail("wrong password")
            except ConnectionClosed as exc:
                return self._fail(f"{exc} before the name was accepted")
            except trio.TooSlowError:
                return self._fail(f"not registered within {connection.connect_timeout:g} s")
        if not registered:
            return None
        failure: BotFailure | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, client)
            with self._interruptible():
                failure = await self._run_script(client)
            with trio.move_on_after(self.config.quit_timeout):
                if not self._quit_sent and not self._closed.is_set():
                    with suppress(ConnectionClosed):
                        await client.send_line("/quit")
                await self._closed.wait()
            nursery.cancel_scope.cancel()
        return failure

    async def _receive(self, client: ChatClient) -> None:
        try:
            while True:
                line = await client.receive_line()
                now = trio.current_time()
                self.counters.received += 1
                self._observe(line, now)
                self._inbox.append(line)
                self._arrived.set()
                self._arrived = trio.Event()
        except ConnectionClosed:
            pass
        finally:
            self._closed.set()
            self._arrived.set()

    def _observe(self, line: str, now: float) -> None:
        """Time the echoes of our own chat lines; follow our renames."""
        match = _CHAT_RE.match(line)
        if match is not None:
            if match[1] == self.name and self._sent_at:
                self.counters.latencies.append(now - self._sent_at.popleft())
            return
        rename = _RENAME_RE.match(line)
        if rename is not None and rename[1] == self.name:
            self.name = rename[2]

    async def _run_script(self, client: ChatClient) -> BotFailure | None:
        body = list(self.steps)
        final = body.pop() if body and isinstance(body[-1], Send) and body[-1].is_quit else None
        chat = {id(step) for step in body if isinstance(step, Send) and step.is_chat}
        for loop in range(1, self.config.loop + 1):
            for step in body:
                try:
                    reason = await self._step(client, step, id(step) in chat)
                except ConnectionClosed as exc:
                    reason = str(exc)
                if reason is not None:
                    return self._fail(reason, step, loop)
        if final is not None:
            # The server may hang up as soon as it reads /quit.
            with suppress(ConnectionClosed):
                await self._step(client, final, False)
            self._quit_sent = True
        return None

    async def _step(self, client: ChatClient, step: Step, is_chat: bool) -> str | None:
        """Run one step; return why it failed, or None."""
        match step:
            case Send(_, text):
                await self._pace()
                if is_chat:
                    self._sent_at.append(trio.current_time())
                await client.send_line(text)
                self.counters.sent += 1
            case Sleep(_, seconds):
                await trio.sleep(seconds)
            case Expect():
                return await self._expect(step)
        return None

    async def _pace(self) -> None:
        if not self.config.rate:
            return
        now = trio.current_time()
        self._next_send = max(now, self._next_send + 1 / self.config.rate)
        await trio.sleep_until(self._next_send)

    async def _expect(self, step: Expect) -> str | None:
        with trio.move_on_after(step.timeout):
            while True:
                # Lines received since the last match count too, as in expect(1):
                # a reply that raced ahead of the @expect is not missed.
                while self._inbox:
                    if step.pattern.search(self._inbox.popleft()):
                        return None
                if self._closed.is_set():
                    return "the server closed the connection before a line matched"
                await self._arrived.wait()
        return f"no line matched within {step.timeout:g} s"


class BotRunner:
    """Runs ``config.count`` bots on one script, each a task in one nursery."""

    def __init__(self, steps: Sequence[Step], config: BotConfig | None = None) -> None:
        self.config = config or BotConfig()
        self._counters = _Counters()
        self.bots = [_Bot(n, steps, self.config, self._counters) for n in self.config.names()]
        self.interrupted = False

    def stop(self) -> None:
        """Stop every bot cleanly (Ctrl-C): each says /quit; :meth:`run` still returns a summary."""
        self.interrupted = True
        for bot in self.bots:
            bot.stop()

    async def run(self) -> Summary:
        failures: dict[int, BotFailure] = {}
        start = trio.current_time()

        async def one(index: int, bot: _Bot) -> None:
            try:
                failure = await bot.run()
            except Exception as exc:
                # A bug in one bot must not hide the others' results.
                failure = BotFailure(bot.name, f"internal error: {exc!r}")
            if failure is not None:
                failures[index] = failure

        async with trio.open_nursery() as nursery:
            for index, bot in enumerate(self.bots):
                nursery.start_soon(one, index, bot)
        counters = self._counters
        return Summary(
            bots=len(self.bots),
            failures=[failures[i] for i in sorted(failures)],
            sent=counters.sent,
            received=counters.received,
            latencies=list(counters.latencies),
            elapsed=trio.current_time() - start,
            interrupted=self.interrupted,
        )


def check_names(config: BotConfig) -> str | None:
    """Why the bots' names are invalid, or None."""
    for name in (config.names()[0], config.names()[-1]):
        error = p.name_error(name)
        if error is not None:
            return f"{name!r}: {error}"
    return None


__all__ = ["BotConfig", "BotFailure", "BotRunner", "Summary", "check_names", "percentile"]
