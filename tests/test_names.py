"""Impersonation through a real server: look-alike, mixed-script and invisible names, bidi text."""

from __future__ import annotations

import re

import pytest
from conftest import Connect, StartServer

from triochat.client.connection import NameRejected


async def test_a_look_alike_of_a_taken_name_is_taken(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server()
    await connect(port, "ace")
    await connect(port, "bob")
    mallory = await connect(port)
    look_alikes = [
        "\u0430\u0441\u0435",  # all Cyrillic: one script, so only the skeleton catches it
        "\u0410\u0421\u0415",
        "\uff41\uff43\uff45",  # fullwidth
        "b0b",
    ]
    for name in look_alikes:
        with pytest.raises(NameRejected, match=f"^Name {name} is taken, choose another$"):
            await mallory.register(name)
    # The connection stayed open; a name that merely resembles nobody's works.
    lines = await mallory.register("mallory")
    assert lines[-1].endswith("* mallory joined #lobby")


async def test_mixed_script_and_invisible_names_are_refused(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server()
    await connect(port, "ann")
    mallory = await connect(port)
    with pytest.raises(NameRejected, match="it mixes Cyrillic and Latin characters"):
        await mallory.register("\u0430nn")  # Cyrillic a, Latin nn
    for name, code in [("an\u200bn", "U+200B"), ("ann\u2060", "U+2060"), ("\u3164", "U+3164")]:
        with pytest.raises(NameRejected, match=re.escape(code) + " .* is invisible"):
            await mallory.register(name)
    # A bidi override goes with the line's other controls; what is left is compared.
    with pytest.raises(NameRejected, match=r"^Name ann is taken, choose another$"):
        await mallory.register("\u202eann\u202c")
    # /nick follows the same rules.
    await mallory.register("mallory")
    await mallory.send_line("/nick \u0430nn")
    assert "it mixes Cyrillic and Latin" in await mallory.receive_line()


async def test_bidi_overrides_are_stripped_from_text(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server(rate=0)
    ann = await connect(port, "ann")
    mallory = await connect(port, "mallory")
    assert (await ann.receive_line()).endswith("* mallory joined #lobby")
    # Shown with the override, "moc.elgoog" reads as "google.com".
    await mallory.send_line("see https://evil.example/\u202emoc.elgoog \u2066x\u2069")
    line = await ann.receive_line()
    assert line.endswith("<mallory> see https://evil.example/moc.elgoog x")
    # Zero-width joiners in emoji sequences are text, and stay.
    await mallory.send_line("family: \U0001f468\u200d\U0001f469\u200d\U0001f467")
    assert (await ann.receive_line()).endswith("family: \U0001f468\u200d\U0001f469\u200d\U0001f467")


def test_a_name_that_is_its_own_key_is_its_key() -> None:
    """Memory: a member keeps one string for its name and key when they are alike."""
    from triochat.core.names import name_key

    name = "".join(["ann", "e"])  # made at run time: not the constant "anne"
    assert name_key(name) is name
    assert name_key("Anne") == "anne"
    assert name_key("u1") == "ul"  # a look-alike digit: a key of its own
