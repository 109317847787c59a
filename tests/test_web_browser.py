"""The chat page in real headless Chromium (Debian's ``chromium``), driven by Playwright.

Skipped where Chromium or Playwright is missing, except under ``CI=true``,
where they must be installed (``.ci/run``). The browser is Debian's, never
one Playwright downloads.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from _proxy import Proxy

CHROMIUM = os.environ.get("TRIOCHAT_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() == "true"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = "<img src=x onerror=alert(1)>"

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    if IN_CI:
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)
if not shutil.which(CHROMIUM):  # pragma: no cover - depends on the machine
    if IN_CI:
        pytest.fail(f"CI=true but there is no Chromium at {CHROMIUM}")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``triochat serve`` in a subprocess, on fixed ports so that it can be restarted."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.port = free_port()
        self.web_port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self.users: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    def start(self) -> None:
        command = [sys.executable, "-m", "triochat", "serve", "--port", str(self.port)]
        command += ["--web-port", str(self.web_port), "--rate", "0", *self.args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("triochat web listening on "):
                assert line.split()[-1] == self.url
                return
        raise AssertionError("the server stopped before listening")

    def stop(self) -> None:
        while self.users:  # closed even when a test failed before it closed them
            self.users.pop().close()
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None

    def nc(self, name: str) -> socket.socket:
        user = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.users.append(user)
        user.sendall(f"{name}\n".encode())
        return user


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    yield running
    running.stop()


def open_page(browser: Browser, url: str, name: str, width: int = 1000) -> Page:
    page = browser.new_page(viewport={"width": width, "height": 640})
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    page.goto(url)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Name").press("Enter")
    expect(page.get_by_role("status")).to_have_text(f"Connected as {name}")
    return page


def say(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def read_until(user: socket.socket, text: bytes) -> bytes:
    got = b""
    while text not in got:
        chunk = user.recv(65536)
        assert chunk, f"closed before {text!r}"
        got += chunk
    return got


def test_two_browser_users_and_an_nc_user_chat_and_html_stays_text(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    ann = open_page(browser, server.url, "ann")
    bob = open_page(browser, server.url, "bob", width=360)
    nc = server.nc("carol")
    read_until(nc, b"* Users in #lobby")
    log = bob.get_by_role("log")
    expect(bob.get_by_role("list", name="Members")).to_contain_text("carol")

    say(ann, "hello from ann")
    say(ann, "/me waves")
    nc.sendall(f"hi both {XSS}\n".encode())
    say(bob, XSS)
    expect(log).to_contain_text("hello from ann")
    expect(log.locator(".acted")).to_contain_text("ann waves")
    expect(log).to_contain_text(f"hi both {XSS}")
    expect(ann.get_by_role("log")).to_contain_text(XSS)
    # Until bob's line: carol's own echo ends the same way and may come first.
    got = read_until(nc, f"<bob> {XSS}\n".encode())  # relayed as it was typed
    assert b"<ann> hello from ann\n" in got
    # Shown as text, never parsed: no image, no handler ran (a dialog fails the test).
    assert ann.locator("#log img").count() == 0
    assert bob.locator("#log img").count() == 0

    # Nothing overflows sideways on a phone-sized screen.
    assert bob.evaluate("document.documentElement.scrollWidth") <= 360
    nc.close()
    ann.close()
    bob.close()


def test_a_mention_raises_the_room_s_unread_mark(browser: Browser, server: Server) -> None:
    bob = open_page(browser, server.url, "bob")
    say(bob, "/join #side")
    rooms = bob.get_by_role("list", name="Rooms")
    expect(rooms.get_by_role("button", name="#side")).to_have_attribute("aria-current", "true")
    nc = server.nc("carol")
    read_until(nc, b"* Users in #lobby")
    nc.sendall(b"just chatting\n")
    lobby = rooms.get_by_role("button", name="#lobby")
    expect(lobby).to_contain_text("1")
    expect(lobby).not_to_have_class("mention")
    nc.sendall(b"hey bob, look\n")
    expect(lobby).to_contain_text("2")
    expect(lobby).to_have_class("mention")
    lobby.focus()  # by keyboard: reading the room clears its mark
    bob.keyboard.press("Enter")
    expect(lobby).not_to_have_class("mention")
    expect(bob.get_by_role("log")).to_contain_text("hey bob, look")
    expect(bob.get_by_label("Message")).to_be_focused()
    # A private message is a conversation of its own, and marked as a mention.
    nc.sendall(b"/msg bob just you\n")
    carol = rooms.get_by_role("button", name="@carol")
    expect(carol).to_have_class("mention")
    carol.click()
    expect(bob.get_by_role("log")).to_contain_text("just you")
    say(bob, "got it")
    read_until(nc, b"*bob* got it")
    nc.close()
    bob.close()


def test_the_page_reconnects_after_a_restart_without_duplicates(
    browser: Browser, tmp_path: Path
) -> None:
    server = Server("--db", str(tmp_path / "chat.db"))
    server.start()
    try:
        ann = open_page(browser, server.url, "ann")
        say(ann, "before the restart")
        log = ann.get_by_role("log")
        expect(log).to_contain_text("before the restart")
        ann.get_by_label("Message").fill("half typed")
        server.stop()
        expect(ann.get_by_role("status")).to_contain_text("Server shutting down")
        server.start()
        # The page's backoff (0.5 s doubling, with jitter) may wait a few seconds.
        expect(ann.get_by_role("status")).to_have_text("Connected as ann", timeout=20_000)
        assert ann.get_by_label("Message").input_value() == "half typed"
        nc = server.nc("carol")
        read_until(nc, b"before the restart")  # history survived, in the database
        nc.sendall(b"after the restart\n")
        expect(log).to_contain_text("after the restart")
        assert log.get_by_text("before the restart").count() == 1
        nc.close()
        ann.close()
    finally:
        server.stop()


def test_scrolling_up_past_the_first_line_fetches_older_history(
    browser: Browser, tmp_path: Path
) -> None:
    server = Server("--db", str(tmp_path / "chat.db"), "--history", "5")
    server.start()
    try:
        nc = server.nc("carol")
        read_until(nc, b"* Users in #lobby")
        nc.sendall(b"".join(f"early {i}\n".encode() for i in range(12)))
        read_until(nc, b"early 11\n")
        ann = open_page(browser, server.url, "ann")
        log = ann.get_by_role("log")
        expect(log).to_contain_text("early 11")
        assert log.get_by_text("early 0", exact=True).count() == 0  # only the last 5 came
        log.focus()
        ann.keyboard.press("PageUp")
        expect(log.get_by_text("early 0", exact=True)).to_have_count(1)
        lines = log.locator(".said .text").all_inner_texts()
        assert lines == [f"early {i}" for i in range(12)]  # in order, none twice
        nc.close()
        ann.close()
    finally:
        server.stop()


def test_the_member_list_badges_operators_and_away_members(
    browser: Browser, tmp_path: Path
) -> None:
    server = Server("--db", str(tmp_path / "chat.db"))
    server.start()
    try:
        ann = open_page(browser, server.url, "ann", width=360)
        say(ann, "/register a long passphrase")
        expect(ann.get_by_role("log")).to_contain_text("ann is registered to you now")
        say(ann, "/join #class")
        members = ann.get_by_role("list", name="Members")
        # The creator of a room operates it, and its own list says so.
        expect(members.locator("li", has_text="ann").locator(".badge.op")).to_have_text("op")
        carol = open_page(browser, server.url, "carol")
        say(carol, "/register another passphrase")
        expect(carol.get_by_role("log")).to_contain_text("carol is registered to you now")
        say(carol, "/join #class")
        nc = server.nc("bob")
        read_until(nc, b"* Users in #lobby")
        nc.sendall(b"/join #class\nbrb, coffee\n/away back at ten\n")
        read_until(nc, b"* You are away: back at ten")
        say(ann, "/topic Be kind; questions at the end")
        # An operator given by /op shows at once, on every page in the room.
        say(ann, "/op carol")
        for page in (ann, carol):
            listed = page.get_by_role("list", name="Members")
            expect(listed.locator("li", has_text="carol").locator(".badge.op")).to_be_visible()
        say(ann, "/users")
        bob = members.locator("li", has_text="bob")
        expect(bob.locator(".badge.away")).to_have_text("away")
        assert bob.locator(".badge.op").count() == 0
        say(ann, "Welcome, everyone!")
        expect(ann.get_by_role("log")).to_contain_text("Welcome, everyone!")
        ann.screenshot(path=str(tmp_path / "web-page-360.png"))
        if os.environ.get("TRIOCHAT_SCREENSHOT"):
            shutil.copy(tmp_path / "web-page-360.png", os.environ["TRIOCHAT_SCREENSHOT"])
        say(ann, "/deop carol")
        expect(carol.get_by_role("list", name="Members").locator(".badge.op")).to_have_count(1)
        nc.close()
        ann.close()
        carol.close()
    finally:
        server.stop()


class ProxyThread:
    """A :class:`Proxy` in its own thread (its own trio loop), driven from a sync test."""

    def __init__(self, target: int) -> None:
        self.proxy = Proxy(target)
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._stop:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.proxy.run)
                self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}/"

    def cut(self, *, refusing: bool) -> None:
        """Cut the page's link; while ``refusing``, new ones are closed at once too."""

        def cut() -> None:
            self.proxy.refusing = refusing
            self.proxy.cut()

        trio.from_thread.run_sync(cut, trio_token=self._token)

    def let_in(self) -> None:
        trio.from_thread.run_sync(setattr, self.proxy, "refusing", False, trio_token=self._token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.cancel, trio_token=self._token)
        self._thread.join(10)


@pytest.fixture
def proxied(server: Server) -> Iterator[ProxyThread]:
    """The page and its WebSocket reach ``server`` through a proxy the test can cut."""
    proxy = ProxyThread(server.web_port)
    yield proxy
    proxy.close()


def lines_said(page: Page, prefix: str) -> list[str]:
    return [t for t in page.locator("#log .said .text").all_inner_texts() if t.startswith(prefix)]


def test_the_page_resumes_through_cuts_without_reloading_and_the_room_sees_nothing(
    browser: Browser, server: Server, proxied: ProxyThread, tmp_path: Path
) -> None:
    ann = open_page(browser, proxied.url, "ann")
    ann.evaluate("window.loadedOnce = 'still this page'")
    nc = server.nc("carol")
    heard = read_until(nc, b"* Users in #lobby")
    ann.get_by_label("Message").fill("half typed")
    status = ann.get_by_role("status")
    sent = 0
    for cut in range(3):
        proxied.cut(refusing=True)  # the network is gone for a while
        expect(status).to_contain_text("Connection lost: reconnecting in")
        if cut == 0:
            shot = tmp_path / "reconnecting.png"
            ann.screenshot(path=str(shot))
            if os.environ.get("TRIOCHAT_RECONNECT_SCREENSHOT"):
                shutil.copy(shot, os.environ["TRIOCHAT_RECONNECT_SCREENSHOT"])
        for _ in range(5):
            sent += 1
            nc.sendall(f"line {sent}\n".encode())
        heard += read_until(nc, f"line {sent}\n".encode())
        proxied.let_in()
        expect(status).to_have_text("Connected as ann", timeout=20_000)
        for _ in range(3):
            sent += 1
            nc.sendall(f"line {sent}\n".encode())
    expect(ann.get_by_role("log")).to_contain_text(f"line {sent}")
    # Every line once, in order, on the same page (never reloaded), the typing kept.
    assert lines_said(ann, "line ") == [f"line {i}" for i in range(1, sent + 1)]
    assert ann.evaluate("window.loadedOnce") == "still this page"
    assert ann.get_by_label("Message").input_value() == "half typed"
    assert ann.locator("#log .gap").count() == 0
    nc.sendall(b"/users\n")
    heard += read_until(nc, b"* Users in #lobby: ann, carol\n")
    assert b"* ann left" not in heard  # the room saw no left, no joined
    assert b"* ann joined" not in heard
    nc.close()
    ann.close()


def test_past_the_grace_the_page_registers_anew_and_shows_one_gap_line(browser: Browser) -> None:
    server = Server("--resume-grace", "1", "--history", "2")
    server.start()
    proxy = ProxyThread(server.web_port)
    try:
        ann = open_page(browser, proxy.url, "ann")
        nc = server.nc("carol")
        read_until(nc, b"* Users in #lobby")
        nc.sendall(b"seen 1\nseen 2\n")
        expect(ann.get_by_role("log")).to_contain_text("seen 2")
        proxy.cut(refusing=True)
        read_until(nc, b"* ann left #lobby (connection lost)")
        nc.sendall(b"".join(f"gone {i}\n".encode() for i in range(1, 6)))
        read_until(nc, b"gone 5\n")
        proxy.let_in()
        expect(ann.get_by_role("status")).to_have_text("Connected as ann", timeout=20_000)
        log = ann.get_by_role("log")
        expect(log).to_contain_text("gone 5")
        # Only the last 2 are kept for joiners: the 3 before them are one gap line.
        expect(log.locator(".gap")).to_have_count(1)
        expect(log.locator(".gap")).to_contain_text("missed lines in #lobby")
        assert lines_said(ann, "seen ") == ["seen 1", "seen 2"]  # not shown twice
        assert lines_said(ann, "gone ") == ["gone 4", "gone 5"]
        nc.close()
        ann.close()
    finally:
        proxy.close()
        server.stop()


def test_a_reloaded_page_is_not_held_its_name_is_free_at_once(
    browser: Browser, server: Server
) -> None:
    ann = open_page(browser, server.url, "ann")
    nc = server.nc("carol")
    read_until(nc, b"* Users in #lobby")
    ann.reload()  # the browser closes the WebSocket with 1001 on the way out
    read_until(nc, b"* ann left #lobby (connection lost)")
    ann.get_by_label("Name").fill("ann")
    ann.get_by_label("Name").press("Enter")
    expect(ann.get_by_role("status")).to_have_text("Connected as ann")
    read_until(nc, b"* ann joined #lobby")
    nc.close()
    ann.close()
