"""The terminal UI comes back by itself: a real pty, a real server, a proxy on threads that cuts."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from test_join_tty import Chatter, Server, Terminal


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    yield server
    server.stop()


class _ThreadProxy:
    """A TCP proxy on threads that the test can cut (close both sides) or make refuse."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refusing = False
        self.links: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            self.links += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    def cut(self) -> None:
        for sock in self.links:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.links.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_broken_link_says_reconnecting_keeps_the_typed_line_and_comes_back(
    server: Server,
) -> None:
    proxy = _ThreadProxy(server.port)
    ann: Terminal | None = None
    ben: Chatter | None = None
    try:
        ann = Terminal(proxy.port, "--name", "ann")
        ann.wait_text("* ann joined #lobby")
        ben = Chatter(server.port, "ben")
        ann.wait_text("* ben joined #lobby")
        ann.child.send("half typed")
        ann.wait_for("the typed text", lambda: ann.input_line == "> half typed")
        proxy.refusing = True
        proxy.cut()
        ann.wait_for("the reconnecting notice", lambda: "reconnecting in" in ann.status_line)
        assert ann.input_line == "> half typed"
        ben.send("while you were away")
        ben.until("<ben> while you were away")
        proxy.refusing = False
        ann.wait_text("<ben> while you were away")
        ann.wait_for("the notice to go", lambda: "reconnecting" not in ann.status_line)
        assert ann.input_line == "> half typed"
        ann.child.send("\r")
        ben.until("<ann> half typed")
        ann.child.send("\x04")
        ben.until("* ann left #lobby (quit)")
        assert ann.exit_code_and_tty_restored() == 0
        # ben saw ann leave only at the end: never for the broken link
        assert [line for line in ben.seen if "* ann " in line] == [
            ben.seen[-1],
        ]
    finally:
        if ann is not None:
            ann.close()
        if ben is not None:
            ben.close()
        proxy.close()
