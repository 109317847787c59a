"""Protocol v2 and resume through the real server: memory streams and trio's jumping clock.

The server runs whole (``serve``, with its flusher and its expiry of held
members); clients reach it over memory streams, and a "cut" is the client
closing its end without ``/quit``.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from _v2 import resume, serving, v1_user

from triochat.protocol import v2


async def test_v1_clients_see_no_change(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as (_, connect, _v2):
        client = await connect()
        assert await client.until("* What is your name?") == [
            "* Welcome to triochat! 0 users online. Commands start with /, try /help.",
            "* What is your name?",
        ]
        await client.send("alice", "hello")
        lines = await client.until("[")
        assert lines[-1].endswith("* alice joined #lobby")
        assert (await client.line() or "").endswith("<alice> hello")


async def test_v2_registration_gives_a_token_and_tagged_lines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (_, connect, connect_v2):
        bob = await v1_user(connect, "bob")
        alice = await connect_v2()
        opening = await alice.hello()
        assert opening[-2:] == [
            "hello version=2 grace=30 resume-max=1000",
            "notice :What is your name?",
        ]
        await alice.send("alice")
        lines = await alice.parsed("room")
        kinds = [line.kind for line in lines]
        assert kinds == ["welcome", "users", "joined", "room"]
        welcome, users, joined, room = lines
        assert len(welcome["token"]) == 32
        assert welcome["grace"] == "30"
        assert users.text == "alice bob"
        assert joined["room"] == room["room"] == "#lobby"
        assert joined.number("seq") == room.number("seq")
        assert joined["time"].endswith("Z")
        assert "T" in joined["time"]
        await alice.send("hi there: with a colon")
        said = await alice.parsed("said")
        assert said[-1].text == "hi there: with a colon"
        assert said[-1].number("seq") == joined.number("seq") + 1
        # bob, on v1, sees it as ever
        assert (await bob.line() or "").endswith("] * alice joined #lobby")
        assert (await bob.line() or "").endswith("] <alice> hi there: with a colon")


async def test_v2_members_are_in_several_rooms(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as (server, _connect, connect_v2):
        alice = await connect_v2()
        await alice.register("alice")
        await alice.send("/join #dev")
        lines = await alice.parsed("room")
        assert lines[-1]["room"] == "#dev"
        assert set(alice.positions) == {"#lobby", "#dev"}
        await alice.send("/to #lobby still here", "in dev")
        said = [line for line in await alice.parsed("said") if line.kind == "said"]
        said += [line for line in await alice.parsed("said") if line.kind == "said"]
        assert [(line["room"], line.text) for line in said] == [
            ("#lobby", "still here"),
            ("#dev", "in dev"),
        ]
        await alice.send("/part #dev bored")
        left = (await alice.parsed("left"))[-1]
        assert (left["room"], left.text) == ("#dev", "bored")
        member = server.hub.member("alice")
        assert member is not None
        assert list(member.rooms) == ["#lobby"]


async def test_a_cut_within_the_grace_resumes_silently_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (server, connect, connect_v2):
        bob = await v1_user(connect, "bob")
        alice = await connect_v2()
        await alice.register("alice")
        assert (await bob.line() or "").endswith("* alice joined #lobby")
        await alice.cut()
        await trio.sleep(10)  # within the 30 s grace
        await bob.send("one", "two")
        await bob.until("[")
        await bob.until("[")
        assert server.tokens.held == 1
        again = await resume(connect_v2, alice)
        lines = await again.parsed("resumed")
        assert [(line.kind, line.text) for line in lines] == [
            ("welcome", None),
            ("said", "one"),
            ("said", "two"),
            ("resumed", None),
        ]
        assert lines[0]["name"] == "alice"
        assert lines[0]["token"] != alice.token  # single use: a new one
        assert lines[-1].number("count") == 2
        await again.send("back")
        assert (await again.parsed("said"))[-1].text == "back"
        # bob saw no leave and no join: the next line is alice's
        assert (await bob.line() or "").endswith("<alice> back")
        assert server.tokens.held == 0


async def test_past_the_grace_the_room_sees_the_leave_and_the_token_is_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(resume_grace=5) as (_server, connect, connect_v2):
        bob = await v1_user(connect, "bob")
        alice = await connect_v2()
        await alice.register("alice")
        await bob.line()
        await alice.cut()
        start = trio.current_time()
        left = await bob.line()
        assert left is not None
        assert left.endswith("* alice left #lobby (connection lost)")
        assert trio.current_time() - start == pytest.approx(5)
        again = await connect_v2()
        await again.hello()
        await again.send(f"/resume {alice.token} #lobby=x:1")
        assert await again.until("notice :What is your name?") == [
            "error :That resume token is not valid (unknown, used or expired); give your name",
            "notice :What is your name?",
        ]
        await again.send("alice")  # the name is free again
        assert (await again.parsed("room"))[0]["name"] == "alice"


async def test_quit_leaves_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as (server, connect, connect_v2):
        bob = await v1_user(connect, "bob")
        alice = await connect_v2()
        await alice.register("alice")
        await bob.line()
        start = trio.current_time()
        await alice.send("/quit gone")
        assert (await bob.line() or "").endswith("* alice left #lobby (gone)")
        assert trio.current_time() == start
        again = await connect_v2()
        await again.hello()
        await again.send(f"/resume {alice.token}")
        assert (await again.until("error"))[-1].startswith("error :That resume token is not")
        assert server.tokens.held == 0


async def test_the_old_token_stays_valid_until_the_new_one_is_acked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (_server, connect, connect_v2):
        bob = await v1_user(connect, "bob")
        alice = await connect_v2()
        await alice.register("alice")
        await bob.line()
        first = alice.token
        await alice.cut()
        # The resume's answer is lost with its connection: the first token still works.
        lost = await connect_v2()
        await lost.hello()
        await lost.send(f"/resume {first}")
        second = (await lost.parsed("welcome"))[-1]["token"]
        await lost.cut()
        third_try = await connect_v2()
        await third_try.hello()
        await third_try.send(f"/resume {first}")
        third = (await third_try.parsed("welcome"))[-1]["token"]
        await third_try.send(f"/ack {third}")
        await third_try.send("/ack not-mine")
        assert (await third_try.until("error"))[-1] == "error :That is not your newest resume token"
        await third_try.cut()
        for used in (first, second):
            probe = await connect_v2()
            await probe.hello()
            await probe.send(f"/resume {used}")
            assert (await probe.until("error"))[-1].startswith("error :That resume token is not")
        final = await connect_v2()
        await final.hello()
        await final.send(f"/resume {third}")
        assert (await final.parsed("welcome"))[-1]["name"] == "alice"
        await final.send("still me")
        # bob saw nothing of all that but the line
        assert (await bob.line() or "").endswith("<alice> still me")


async def test_a_resume_takes_over_a_connection_that_has_not_noticed_it_is_dead(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving() as (server, connect, connect_v2):
        bob = await v1_user(connect, "bob")
        alice = await connect_v2()
        await alice.register("alice")
        await bob.line()
        again = await connect_v2()
        await again.hello()
        await again.send(f"/resume {alice.token}")
        await again.parsed("welcome")
        while await alice.line() is not None:  # the old connection is closed
            pass
        await again.send("moved")
        assert (await bob.line() or "").endswith("<alice> moved")
        assert server.hub.online() == 2
    closed = [r.getMessage() for r in caplog.records if " closed (" in r.getMessage()]
    assert any(m.endswith("(resumed on another connection)") for m in closed), closed
    assert alice.token not in caplog.text  # tokens are never logged
    assert "alice resumed" in caplog.text


async def test_bad_resumes_get_clear_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as (_server, _connect, connect_v2):
        alice = await connect_v2()
        await alice.register("alice")
        epoch, seq = alice.positions["#lobby"]
        await alice.cut()
        again = await connect_v2()
        await again.hello()
        await again.send("/resume")
        assert (await again.until("error"))[-1].startswith("error :Usage: /resume TOKEN")
        await again.send(f"/resume {alice.token} #lobby=nope")
        assert (await again.until("error"))[-1].startswith("error :Bad room position")
        await again.send(
            f"/resume {alice.token} #lobby={epoch}:{seq + 5} #never={epoch}:1 #lobby=other:1"
        )
        raw = [line for _ in range(3) for line in await again.until("resume-failed")]
        lines = [v2.parse_line(line) for line in raw]
        failed = [line for line in lines if line.kind == "resume-failed"]
        assert [(line["room"], line.text) for line in failed] == [
            ("#lobby", f"number {seq + 5} is from the future (the room is at {seq})"),
            ("#never", "no such room"),
            ("#lobby", "the room's history was reset"),
        ]
        assert failed[0].number("lost") == 0
        assert failed[2].number("lost") == seq


async def test_a_resume_flood_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(resume_attempts=3) as (server, _connect, connect_v2):
        alice = await connect_v2()
        await alice.register("alice")
        guesser = await connect_v2()
        await guesser.hello()
        await guesser.send(*(f"/resume {i:032x}" for i in range(10)))
        lines = []
        while (line := await guesser.line()) is not None:
            lines.append(line)
        errors = [line for line in lines if line.startswith("error")]
        assert errors == [
            "error :That resume token is not valid (unknown, used or expired); give your name",
            "error :That resume token is not valid (unknown, used or expired); give your name",
            "error :Too many bad resume tokens, closing",
        ]
        # the real token says nothing of itself, and still works
        assert alice.token not in "".join(lines)
        assert server.hub.member("alice") is not None


async def test_on_a_password_server_the_token_stands_for_the_password(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(password="sesame", password_delay=1.0) as (_server, _c, connect_v2):
        alice = await connect_v2()
        await alice.hello()
        await alice.send("alice")
        assert (await alice.until("notice :Password:"))[-1] == "notice :Password:"
        await alice.send("sesame")
        lines = await alice.parsed("room")
        assert lines[0].kind == "welcome"
        await alice.cut()
        again = await connect_v2()
        await again.hello()
        await again.send(f"/resume {alice.token}")  # no password asked
        assert (await again.parsed("welcome"))[-1]["name"] == "alice"
        wrong = await connect_v2()
        await wrong.hello()
        await wrong.send("mallory", "guess")
        rest = []
        while (line := await wrong.line()) is not None:
            rest.append(line)
        assert rest[-1] == "error :Wrong password"


async def test_resume_attempts_is_the_limit(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(resume_attempts=1) as (_server, _connect, connect_v2):
        guesser = await connect_v2()
        await guesser.hello()
        await guesser.send(f"/resume {0:032x}")
        lines = []
        while (line := await guesser.line()) is not None:
            lines.append(line)
        assert lines == ["error :Too many bad resume tokens, closing"]


async def test_bad_tokens_cost_the_passwords_growing_delay_and_all_read_alike(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(resume_grace=5, password_delay=1.0, resume_attempts=10) as (
        _server,
        _connect,
        connect_v2,
    ):
        expired = await connect_v2()
        await expired.register("gone")
        await expired.cut()
        await trio.sleep(6)  # its grace is over
        alice = await connect_v2()
        await alice.register("alice")

        guesser = await connect_v2()
        await guesser.hello()
        answers, waits = [], []
        # Forged, expired, forged: each answer waits twice as long as the one before.
        for token in (f"{0:032x}", expired.token, f"{1:032x}"):
            start = trio.current_time()
            await guesser.send(f"/resume {token}")
            answers.append(await guesser.until("notice :What is your name?"))
            waits.append(trio.current_time() - start)
        assert waits == [1.0, 2.0, 4.0]
        assert (
            answers[0]
            == answers[1]
            == answers[2]
            == [
                "error :That resume token is not valid (unknown, used or expired); give your name",
                "notice :What is your name?",
            ]
        )
        # A token of one's own, valid, does not wipe the record between guesses.
        mine = await connect_v2()
        await mine.hello()
        start = trio.current_time()
        await mine.send(f"/resume {alice.token}")
        await mine.parsed("welcome")
        assert trio.current_time() == start  # a good token is never delayed
        start = trio.current_time()
        await guesser.send(f"/resume {2:032x}")
        assert (await guesser.until("notice"))[0] == answers[0][0]
        assert trio.current_time() - start == 8.0
        assert alice.token not in "".join(line for answer in answers for line in answer)


async def test_private_messages_to_a_held_member_wait_for_it_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(resume_max=2) as (_server, connect, connect_v2):
        bob = await v1_user(connect, "bob")
        alice = await connect_v2()
        await alice.register("alice")
        await bob.line()
        await alice.cut()
        await trio.sleep(1)
        await bob.send("/msg alice one", "/msg alice two", "/msg alice three")
        told = [(await bob.line() or "").split("] ", 1)[-1] for _ in range(5)]
        kept = (
            "* alice's connection is down: your message is kept for them,"
            " and given if they are back in time"
        )
        assert told == [
            "-> *alice* one",
            kept,
            "-> *alice* two",
            kept,
            "! alice's connection is down and 2 private messages wait for them already:"
            " yours was not delivered",
        ]
        again = await resume(connect_v2, alice)
        lines = await again.parsed("resumed")
        privates = await again.parsed("private")
        privates += await again.parsed("private")
        assert [line.kind for line in lines] == ["welcome", "resumed"]
        assert [(line.kind, line.text) for line in privates] == [
            ("private", "one"),
            ("private", "two"),
        ]
        await again.send("/msg bob thanks")
        sent = await again.parsed("private-sent")
        assert [line.kind for line in sent] == ["private-sent"]  # each kept message came once
        assert (await bob.line() or "").endswith("*alice* thanks")


async def test_a_held_members_kept_messages_are_reported_when_its_grace_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(resume_grace=5) as (_server, connect, connect_v2):
        bob = await v1_user(connect, "bob")
        alice = await connect_v2()
        await alice.register("alice")
        await bob.line()
        await alice.cut()
        await bob.send("/msg alice are you there?")
        await bob.line()
        await bob.line()
        lines = [(await bob.line() or "").split("] ", 1)[-1] for _ in range(2)]
        assert lines == [
            "! alice left (connection lost): your message was not delivered: are you there?",
            "* alice left #lobby (connection lost)",
        ]
