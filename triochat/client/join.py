"""``triochat join``: connect, register, then chat until one side ends.

Two front ends share one shape: a send task and a receive task in one
nursery, and whichever ends first cancels the other. Interactive mode (stdin
is a terminal) draws a :class:`~triochat.tui.ChatScreen` with urwid on trio's
own loop; line mode (stdin is a pipe or file) sends each stdin line and
prints each server line to stdout, for scripts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import trio
import urwid

from ..protocol import line as p
from .connection import (
    ChatClient,
    ConnectFailed,
    ConnectionClosed,
    ConnectOptions,
    NameRejected,
    PasswordRequired,
    WrongPassword,
)
from .incoming import RoomState
from .resuming import ResumingClient
from .tui import PALETTE, QUIT, ChatScreen, is_quit_word

# Exit codes, listed in `triochat join --help`.
EXIT_OK: Final = 0
EXIT_CLOSED: Final = 1  # the server closed the connection, or it broke
EXIT_CONNECT: Final = 3  # the server could not be reached
EXIT_NAME: Final = 4  # the name was rejected (line mode)
EXIT_PASSWORD: Final = 5  # the password was missing (line mode) or wrong

# A longer stdin line is skipped with a warning rather than buffered without
# bound (the server's own limit is smaller and answered with a ``!`` line).
STDIN_MAX_LINE: Final = 1 << 20

_QUIT_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_NAME_QUESTION: Final = p.format_info(p.NAME_QUESTION).rstrip("\n")
WRONG_PASSWORD: Final = "wrong password"
_WELCOME_WAIT: Final = 10.0  # seconds for the greeting, before the UI asks for a name anyway


@dataclass(frozen=True, slots=True)
class JoinConfig:
    """What ``triochat join`` was asked to do."""

    name: str | None
    connection: ConnectOptions = field(default_factory=ConnectOptions)
    """Where and how to connect; with no password, interactive mode asks if the server wants one."""
    room: str = p.LOBBY
    quit_timeout: float = 5.0
    scrollback: int = 5000
    max_line: int = p.DEFAULT_MAX_LINE
    """The server's line limit in bytes: the terminal UI refuses a longer line before sending."""
    keep_transcript: int | None = None
    """Lines of the chat the terminal UI prints on exit: None for the last screenful, 0 for none."""
    reconnect: bool = True
    """Line mode speaks protocol v2 and comes back by itself when the connection breaks
    (``--no-reconnect``: v1, and a break ends the session)."""


class JoinError(Exception):
    """A failure to report on one stderr line, with the exit code to leave with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _is_quit_command(text: str) -> bool:
    return isinstance(p.parse_command(text), p.Quit)


async def _connect(config: JoinConfig) -> ChatClient:
    try:
        return await config.connection.open_client()
    except ConnectFailed as exc:
        raise JoinError(str(exc), EXIT_CONNECT) from None


async def _enter_room(client: ChatClient, room: str) -> None:
    if room != p.LOBBY:
        await client.send_line(f"/join {room}")


class _Ending:
    """How a session ends, shared by its tasks (line mode and interactive alike).

    ``quitting`` is set before ``/quit`` goes out, so :meth:`receive` takes
    the close that follows for the answer, not an error; otherwise it keeps
    the close's reason in ``error``. It sets ``closed`` when the connection ends.
    """

    def __init__(self, client: ChatClient, quit_timeout: float) -> None:
        self.quitting = False
        self.closed = trio.Event()
        self.error: str | None = None
        self._client = client
        self._quit_timeout = quit_timeout

    async def receive(
        self, show: Callable[[str], Awaitable[None]], scope: trio.CancelScope
    ) -> None:
        """Hand each line received to ``show`` until the connection ends, then cancel ``scope``.

        ``show`` raising :exc:`BrokenPipeError` means its reader went away
        (``| head``): nobody is listening, so leave quietly, as after ``/quit``.
        """
        try:
            while True:
                await show(await self._client.receive_line())
        except ConnectionClosed as exc:
            if not self.quitting:
                self.error = str(exc)
        except BrokenPipeError:
            self.quitting = True
            with trio.move_on_after(self._quit_timeout):
                with contextlib.suppress(ConnectionClosed):
                    await self._client.quit()
        self.closed.set()
        scope.cancel()

    async def quit(self, scope: trio.CancelScope) -> None:
        """Say ``/quit`` unless it was said, wait (bounded) for the close, then cancel ``scope``."""
        if not self.quitting:
            self.quitting = True
            await self._client.send_line("/quit")
        with trio.move_on_after(self._quit_timeout):
            await self.closed.wait()
        scope.cancel()


# --- line mode -------------------------------------------------------------------


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def _print_lines(*lines: str) -> None:
    """Print ``lines`` to stdout.

    Raises:
      BrokenPipeError: nobody reads stdout any more; it goes to /dev/null from now on.
    """
    if lines:
        try:
            await trio.to_thread.run_sync(_write_stdout, "".join(line + "\n" for line in lines))
        except BrokenPipeError:
            _silence_stdout()
            raise


async def run_line_mode(config: JoinConfig, stdin_fd: int = 0) -> int:
    """Chat from stdin to stdout; return the exit code."""
    if not config.name:
        raise JoinError("--name is required when stdin is not a terminal", 2)
    if config.reconnect:
        return await _run_resuming(config, stdin_fd)
    async with await _connect(config) as client:
        with _registration_errors():
            lines = await client.register(config.name, password=config.connection.password)
        # From the first line printed on, a signal means "quit politely"
        # (one arriving before the session's task listens waits in the receiver).
        with trio.open_signal_receiver(*_QUIT_SIGNALS) as signals:
            try:
                await _print_lines(*client.welcome, *lines)
            except BrokenPipeError:
                return EXIT_OK
            return await _line_session(client, config, stdin_fd, signals)


@contextlib.contextmanager
def _registration_errors() -> Iterator[None]:
    """Registration's failures as the exit codes docs/client.md lists."""
    try:
        yield
    except ConnectFailed as exc:
        raise JoinError(str(exc), EXIT_CONNECT) from None
    except NameRejected as exc:
        raise JoinError(f"name rejected: {exc}", EXIT_NAME) from None
    except PasswordRequired:
        raise JoinError(
            "the server asks for a password: set TRIOCHAT_PASSWORD", EXIT_PASSWORD
        ) from None
    except WrongPassword:
        raise JoinError("wrong password", EXIT_PASSWORD) from None
    except ConnectionClosed as exc:
        raise JoinError(str(exc), EXIT_CLOSED) from None


async def _run_resuming(config: JoinConfig, stdin_fd: int) -> int:
    """Line mode over protocol v2: every line once, in order, across reconnects."""
    assert config.name
    chat = ResumingClient(config.connection, config.name, lambda lines: _print_lines(*lines))
    with _registration_errors():
        lines = await chat.start(config.connection.password)
    error: str | None = None
    with trio.open_signal_receiver(*_QUIT_SIGNALS) as signals:
        try:
            await _print_lines(*lines)
        except BrokenPipeError:
            return EXIT_OK
        closed = trio.Event()

        async def receive() -> None:
            nonlocal error
            try:
                error = await chat.receive(config.connection.password)
            except BrokenPipeError:  # nobody reads stdout (``| head``): leave quietly
                with trio.move_on_after(config.quit_timeout):
                    await chat.quit()
            closed.set()
            nursery.cancel_scope.cancel()

        async def quit_politely() -> None:
            chat.quitting = True
            with trio.move_on_after(config.quit_timeout):
                with contextlib.suppress(ConnectionClosed):
                    await chat.send_line("/quit")
                await closed.wait()
            nursery.cancel_scope.cancel()

        async def send() -> None:
            if config.room != p.LOBBY:
                await chat.send_line(f"/join {config.room}")
            stdin = _StdinLines(stdin_fd)
            while (text := await stdin.next()) is not None:
                if is_quit_word(text) or chat.quitting:
                    break
                if text.strip():
                    if _is_quit_command(text):
                        chat.quitting = True
                    await chat.send_line(text)
                    if chat.quitting:
                        with trio.move_on_after(config.quit_timeout):
                            await closed.wait()
                        nursery.cancel_scope.cancel()
                        return
            await quit_politely()

        async def on_signal() -> None:
            async for _ in signals:
                if chat.quitting:
                    break
                nursery.start_soon(quit_politely)
            nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                nursery.start_soon(_guard_send, send)
                nursery.start_soon(on_signal)
        finally:
            if chat.client is not None:
                await chat.client.aclose()
    if error is not None:
        raise JoinError(error, EXIT_CLOSED)
    return EXIT_OK


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _StdinLines:
    """Lines from a file descriptor, read in a worker thread.

    A thread works for pipes, files and /dev/null alike and never blocks the
    loop; a read abandoned on cancellation ends with the process.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._framer = p.LineFramer(STDIN_MAX_LINE)
        self._eof = False

    async def next(self) -> str | None:
        """The next line, cleaned of control characters; ``None`` at EOF."""
        while True:
            event = self._framer.next_event()
            if isinstance(event, p.Line):
                return p.clean_text(event.text)
            if isinstance(event, p.LineTooLong):
                print(f"triochat: skipped a stdin line over {event.limit} bytes", file=sys.stderr)
                continue
            if self._eof:
                return None
            data = await trio.to_thread.run_sync(os.read, self._fd, 65536, abandon_on_cancel=True)
            if data:
                self._framer.receive_data(data)
            else:
                self._eof = True
                self._framer.receive_data(b"\n")  # a last line without its newline


async def _line_session(
    client: ChatClient, config: JoinConfig, stdin_fd: int, signals: AsyncIterator[int]
) -> int:
    ending = _Ending(client, config.quit_timeout)

    async def send() -> None:
        await _enter_room(client, config.room)
        stdin = _StdinLines(stdin_fd)
        while (text := await stdin.next()) is not None:
            if is_quit_word(text):
                break
            if ending.quitting:
                break  # Ctrl-C: /quit is on its way, and nothing more goes after it
            if text.strip():
                ending.quitting = _is_quit_command(text)
                await client.send_line(text)
                if ending.quitting:
                    break
        await ending.quit(nursery.cancel_scope)

    async def polite_quit() -> None:
        with trio.move_on_after(config.quit_timeout):
            try:
                await client.send_line("/quit")
                await ending.closed.wait()
            except ConnectionClosed:
                pass
        nursery.cancel_scope.cancel()

    async def on_signal() -> None:
        # Ctrl-C or a kill: leave as at EOF. A second one stops waiting for the server.
        async for _ in signals:
            if ending.quitting:
                break
            ending.quitting = True
            nursery.start_soon(polite_quit)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ending.receive, _print_lines, nursery.cancel_scope)
        nursery.start_soon(_guard_send, send)
        nursery.start_soon(on_signal)
    if ending.error is not None:
        raise JoinError(ending.error, EXIT_CLOSED)
    return EXIT_OK


async def _guard_send(send: Callable[[], Awaitable[None]]) -> None:
    """Run ``send``; a connection broken while sending is the receive task's to report."""
    try:
        await send()
    except ConnectionClosed:
        await trio.sleep_forever()


# --- interactive mode ------------------------------------------------------------


async def run_interactive(config: JoinConfig) -> int:
    """Chat in a full-screen terminal UI; return the exit code."""
    if config.reconnect:
        return await _run_interactive_resuming(config)
    async with await _connect(config) as client:
        return await _run_screen(
            config, lambda screen: _interactive_session(client, config, screen)
        )


async def _run_interactive_resuming(config: JoinConfig) -> int:
    """The terminal UI over protocol v2: it comes back by itself, keeping what is typed."""
    chat = ResumingClient(config.connection, config.name or "", _no_show)
    try:
        with trio.move_on_after(_WELCOME_WAIT) as waited:
            client, welcome = await chat.open_link()
    except ConnectFailed as exc:
        raise JoinError(str(exc), EXIT_CONNECT) from None
    except ConnectionClosed as exc:
        raise JoinError(str(exc), EXIT_CLOSED) from None
    if waited.cancelled_caught:
        raise JoinError("the server did not greet us: is it a triochat server?", EXIT_CLOSED)
    try:
        return await _run_screen(
            config, lambda screen: _resuming_session(chat, client, welcome, config, screen)
        )
    finally:
        await chat.aclose()
        await client.aclose()


async def _run_screen(
    config: JoinConfig, session: Callable[[ChatScreen], Awaitable[str | None]]
) -> int:
    """Run the terminal UI around ``session`` (which returns why it ended, or ``None``)."""
    state = RoomState(config.name or "")
    screen = ChatScreen(
        config.connection.server, state, scrollback=config.scrollback, max_line=config.max_line
    )
    event_loop = urwid.TrioEventLoop()
    main_loop = urwid.MainLoop(
        screen.root,
        PALETTE,
        event_loop=event_loop,
        handle_mouse=False,
        input_filter=screen.handle_input,
    )
    error: str | None = None
    # Listening before the screen starts, so no signal can kill the
    # process with the terminal left in cbreak mode.
    with trio.open_signal_receiver(*_QUIT_SIGNALS) as signals:
        try:
            with main_loop.start():
                # Ctrl-C is a key here (it quits politely); signals from elsewhere do the same.
                main_loop.screen.tty_signal_keys(intr="undefined")  # type: ignore[attr-defined]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(event_loop.run_async)
                    nursery.start_soon(_quit_on_signals_ui, screen, signals)
                    error = await session(screen)
                    if error is not None:
                        await screen.any_key.wait()
                    nursery.cancel_scope.cancel()
        finally:
            # The alternate screen is gone with the UI: leave the last lines on the normal one.
            _print_transcript(screen, config.keep_transcript)
    if error == WRONG_PASSWORD:
        raise JoinError(error, EXIT_PASSWORD)
    if error is not None:
        raise JoinError(error, EXIT_CLOSED)
    return EXIT_OK


async def _no_show(lines: list[str]) -> None:  # pragma: no cover - replaced before use
    pass


async def _resuming_session(
    chat: ResumingClient,
    client: ChatClient,
    welcome: list[str],
    config: JoinConfig,
    screen: ChatScreen,
) -> str | None:
    """Register in the UI (asking again while the name is refused), then chat until the user
    quits (``None``) or the link is given up (why)."""
    _show_welcome(screen, welcome)
    password = config.connection.password

    async def ask_password() -> str:
        nonlocal password
        if password is None:
            screen.ask_password()
            action = await screen.next_action()
            if action is QUIT:
                raise _QuitAtPassword
            assert isinstance(action, str)
            screen.registering(chat.name)
            password = action
        return password

    name = config.name or ""
    while True:
        if not name:
            screen.ask_name()
            action = await screen.next_action()
            if action is QUIT:
                return None
            assert isinstance(action, str)
            name = action.strip()
            continue
        screen.registering(name)
        chat.name = name
        try:
            lines = await chat.register_on(client, ask_password)
        except _QuitAtPassword:
            return None
        except WrongPassword:
            screen.finish("Wrong password: the server closed the connection", state=WRONG_PASSWORD)
            return WRONG_PASSWORD
        except NameRejected as exc:
            screen.add_markup([("error", f"! {exc}")])
            screen.set_notice("")
            name = ""
            continue
        except ConnectionClosed as exc:
            screen.finish(str(exc))
            return str(exc)
        break
    chat.client = client
    chat.connected.set()
    screen.state.name = chat.name
    screen.chatting()
    lobby = config.room == p.LOBBY
    if not lobby:
        screen.entering(config.room)
    for line in lines:
        screen.add_line(line, show=lobby)

    async def show(shown: list[str]) -> None:
        for line in shown:
            screen.add_line(line)

    chat._show = show
    chat.status = lambda text: screen.set_notice(text, bad=bool(text))
    error: str | None = None

    async def receive() -> None:
        nonlocal error
        error = await chat.receive(ask_password)
        nursery.cancel_scope.cancel()

    async def send() -> None:
        if not lobby:
            await chat.send_line(f"/join {config.room}")
        while True:
            action = await screen.next_action()
            if action is QUIT:
                break
            assert isinstance(action, str)
            if not action.strip():
                continue
            quitting = _is_quit_command(action)
            if quitting:
                chat.quitting = True
            await chat.send_line(action)
            if quitting:
                break
        chat.quitting = True
        screen.set_notice("leaving…")
        with trio.move_on_after(config.quit_timeout):
            with contextlib.suppress(ConnectionClosed):
                await chat.send_line("/quit")
            await closed.wait()
        nursery.cancel_scope.cancel()

    async def force_quit() -> None:
        await screen.force_quit.wait()
        nursery.cancel_scope.cancel()

    closed = trio.Event()

    async def receive_then_mark() -> None:
        try:
            await receive()
        finally:
            closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(force_quit)
        nursery.start_soon(receive_then_mark)
        nursery.start_soon(_guard_send, send)
    if error is not None:
        screen.finish(error)
    return error


def _print_transcript(screen: ChatScreen, keep: int | None) -> None:
    cols, rows = screen.size or (80, 24)
    # None: the pane's height (the window less the status and input lines).
    lines = screen.transcript(max(rows - 2, 1), cols) if keep is None else screen.last_lines(keep)
    if lines:
        with contextlib.suppress(OSError):
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()


async def _quit_on_signals_ui(screen: ChatScreen, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        screen.request_quit()
        if screen.finished:
            screen.any_key.set()
        if signum == signal.SIGHUP:
            screen.force_quit.set()  # the terminal is gone: nobody to wait for


class _QuitAtPassword(Exception):
    pass


async def _read_welcome(client: ChatClient) -> None:
    """Read the server's greeting up to its name question into ``client.welcome``.

    So the terminal UI shows the welcome before it asks for a name.
    """
    while True:
        line = await client.receive_line()
        client.welcome.append(line)
        if line == _NAME_QUESTION or not line.startswith("* "):
            return


async def _register_interactive(
    client: ChatClient,
    screen: ChatScreen,
    name: str,
    password: str | None = None,
    room: str = p.LOBBY,
) -> bool:
    """Register, asking again in the UI while the name is refused; False if the user quit.

    Raises:
      ConnectionClosed: also for a wrong password (the server hangs up).
    """

    async def ask_password() -> str:
        if password is not None:
            return password
        screen.ask_password()
        action = await screen.next_action()
        if action is QUIT:
            raise _QuitAtPassword
        assert isinstance(action, str)
        screen.registering(name)
        return action

    if not name:
        with trio.move_on_after(_WELCOME_WAIT):  # a server that never asks is not waited for
            await _read_welcome(client)
        _show_welcome(screen, client.welcome)
    while True:
        if not name:
            screen.ask_name()
            action = await screen.next_action()
            if action is QUIT:
                return False
            assert isinstance(action, str)
            name = action.strip()
            continue
        screen.registering(name)
        shown = len(client.welcome)
        try:
            lines = await client.register(name, password=ask_password)
        except _QuitAtPassword:
            return False
        except WrongPassword:
            raise ConnectionClosed(WRONG_PASSWORD) from None
        except NameRejected as exc:
            _show_welcome(screen, client.welcome[shown:])
            screen.add_markup([("error", f"! {exc}")])
            screen.set_notice("")
            name = ""
            continue
        screen.state.name = client.name or name
        screen.chatting()
        _show_welcome(screen, client.welcome[shown:])
        # Another room was asked for: the lobby's history and join are followed, not shown.
        lobby = room == p.LOBBY
        if not lobby:
            screen.entering(room)
        for line in lines:
            screen.add_line(line, show=lobby)
        return True


def _show_welcome(screen: ChatScreen, lines: list[str]) -> None:
    # The name question is not shown: the UI asks itself, in the input line.
    for line in lines:
        if line != _NAME_QUESTION:
            screen.add_line(line)


async def _interactive_session(
    client: ChatClient, config: JoinConfig, screen: ChatScreen
) -> str | None:
    """Chat until the user quits (``None``) or the connection ends (its reason)."""
    ending = _Ending(client, config.quit_timeout)

    async def show(line: str) -> None:
        screen.add_line(line)

    async def send() -> None:
        await _enter_room(client, config.room)
        while True:
            action = await screen.next_action()
            if action is QUIT:
                break
            assert isinstance(action, str)
            if not action.strip():
                continue
            ending.quitting = _is_quit_command(action)
            await client.send_line(action)
            if ending.quitting:
                break
        screen.set_notice("leaving…")
        await ending.quit(nursery.cancel_scope)

    async def force_quit() -> None:
        await screen.force_quit.wait()
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(force_quit)
        try:
            registered = await _register_interactive(
                client, screen, config.name or "", config.connection.password, config.room
            )
        except ConnectionClosed as exc:
            ending.error = str(exc)
            registered = False
        if not registered:
            nursery.cancel_scope.cancel()
        else:
            nursery.start_soon(ending.receive, show, nursery.cancel_scope)
            nursery.start_soon(_guard_send, send)
    if ending.error == WRONG_PASSWORD:
        screen.finish("Wrong password: the server closed the connection", state=WRONG_PASSWORD)
    elif ending.error is not None:
        screen.finish(ending.error)
    return ending.error
