"""The other way to build the web door, for ``web_fanout.py``: hypercorn's trio worker and ASGI.

A minimal chat: every text message that is not JSON is said to everyone, as
the web door's JSON (rendered once), through a bounded channel and a writer
task per recipient, since an ASGI app can only ``await send(...)`` one
connection at a time. ``python benchmarks/hypercorn_chat.py PORT``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

QUEUE = 100_000
members: dict[int, trio.MemorySendChannel[str]] = {}
seq = 0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global seq
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    outgoing, incoming = trio.open_memory_channel[str](QUEUE)
    members[id(outgoing)] = outgoing

    async def writer() -> None:
        async for text in incoming:
            await send({"type": "websocket.send", "text": text})

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    nursery.cancel_scope.cancel()
                    return
                text = message.get("text") or ""
                if text.startswith("{"):
                    continue  # registration: nothing to do here
                seq += 1
                now = time.time()
                event = (
                    json.dumps(
                        {
                            "type": "said",
                            "room": "#lobby",
                            "seq": seq,
                            "ts": now,
                            "name": "s",
                            "text": text,
                        },
                        separators=(",", ":"),
                    )
                    + "\n"
                )
                for member in list(members.values()):
                    with contextlib.suppress(trio.WouldBlock):
                        member.send_nowait(event)
    finally:
        del members[id(outgoing)]


async def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    await serve(app, config)  # type: ignore[arg-type]


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
