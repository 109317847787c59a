"""The link to Redis: connect, run a session, and reconnect with backoff when it fails.

coredis exceptions stop here: they mean "the link is down", never reach the
hub, and are retried. The log gets one warning line per change of state
(lost, with the reason and the delay; back), not a traceback per attempt:
tracebacks, ours and coredis's own, are logged at debug level only.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, NoReturn

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from ..base import BackplaneError
from .options import RedisOptions

log: Final = logging.getLogger("triochat.backplane.redis")

# Errors that mean "the link is down": coredis's own, the socket's, our timeouts, and
# anyio's stream errors, which coredis lets through when a connection closes under it.
LINK_ERRORS: Final = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    BackplaneError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)


def is_link_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or, for a group, every exception in it) means the link is down."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_link_error(e) for e in exc.exceptions)
    return isinstance(exc, LINK_ERRORS)


def describe(exc: BaseException | None) -> str:
    """One line for a failure: its first leaf exception (coredis nests them in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if exc is None:
        return "no reason given"
    text = str(exc) or ("timed out" if isinstance(exc, trio.TooSlowError) else "")
    root, seen = exc, {id(exc)}
    # "Unable to connect" says not why; its cause does. (A chain can loop: stop there.)
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    if root is not exc:
        why = root.strerror if isinstance(root, OSError) and root.strerror else str(root)
        text = f"{text} ({why})" if why else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _CoredisAtDebug(logging.Filter):
    """coredis logs each failed connection attempt with its traceback, at error level;
    the link logs the state change itself, so coredis's records go to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        # The logger's level test is past: what passes here is printed by any handler.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_COREDIS_FILTER: Final = _CoredisAtDebug()


def quiet_coredis() -> None:
    """Put coredis's log records (all on its one logger) at debug level; idempotent."""
    logger = logging.getLogger("coredis")
    if _COREDIS_FILTER not in logger.filters:
        logger.addFilter(_COREDIS_FILTER)


@asynccontextmanager
async def connect(options: RedisOptions) -> AsyncIterator[coredis.Redis[bytes]]:
    """A client for ``options.url``, every operation bounded by ``options.timeout``."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        options.url,
        retry_policy=NoRetryPolicy(),
        stream_timeout=options.timeout,
        connect_timeout=options.timeout,
    )
    # connect_timeout bounds the connection; coredis's client holds a task group,
    # so it is entered with ``async with`` only, never under our own cancel scope.
    async with client:
        yield client


Session = Callable[[Callable[[], None]], Awaitable[None]]
"""Runs one linked session; calls its argument once linked; raises when the link fails."""


async def keep_linked(
    options: RedisOptions,
    session: Session,
    lost: Callable[[bool], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run ``session`` again and again, with backoff, until cancelled.

    ``lost(was_linked)`` is called after each failed session. ``started`` is
    reported once the first session is linked, or has failed: the node serves
    its own users while it keeps trying.
    """
    backoff = options.backoff_min
    status: trio.TaskStatus[None] | None = task_status
    state = "starting"  # Then "up" or "down": a warning only when it changes.

    def linked() -> None:
        nonlocal state, status, backoff
        if state == "down":
            log.warning("link to Redis is back")
        state = "up"
        backoff = options.backoff_min
        if status is not None:
            status.started()
            status = None

    while True:
        failure: BaseException | None = None
        try:
            await session(linked)
        except* LINK_ERRORS as group:
            failure = group
        was_linked = state == "up"
        lost(was_linked)
        if status is not None:
            status.started()
            status = None
        delay = backoff * random.uniform(0.75, 1.0)
        reason = describe(failure)
        if was_linked:
            log.warning("link to Redis lost (%s); retrying in %.2f s", reason, delay)
        elif state == "starting":
            log.warning("cannot reach Redis (%s); retrying in %.2f s", reason, delay)
        else:
            log.debug("still cannot reach Redis (%s); retrying in %.2f s", reason, delay)
        log.debug("the link's failure", exc_info=failure)
        state = "down"
        await trio.sleep(delay)
        backoff = min(backoff * 2, options.backoff_max)
