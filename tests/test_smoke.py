import trio

from triochat import ChatServer, ServerConfig
from triochat.client import open_chat_client


async def test_smoke(nursery: trio.Nursery) -> None:
    server = ChatServer(ServerConfig(port=0))
    listeners = await nursery.start(server.serve)
    port = listeners[0].socket.getsockname()[1]
    async with await open_chat_client("127.0.0.1", port) as client:
        assert await client.register("ann") == ["* Users in #lobby: ann"]
    server.shutdown()
