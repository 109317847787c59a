from conftest import Connect, StartServer


async def test_two_clients_chat(start_server: StartServer, connect: Connect) -> None:
    server, port = await start_server()
    ann = await connect(port, "ann")
    ben = await connect(port, "ben")
    assert (await ann.receive_line()).endswith("* ben joined #lobby")
    await ben.send_line("hello")
    assert (await ann.receive_line()).endswith("<ben> hello")
    server.shutdown()
