"""The Redis transport on its own: a real Redis and a real hub as the node, no server, no sockets
to clients. What the cluster's rules look like to users is in test_cluster.py.
"""

from __future__ import annotations

import logging
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from redis_support import (
    FAST,
    TEST_REDIS,
    RedisServer,
    answers,
    delete_cluster_keys,
    unavailable,
    unique_cluster,
    wait_until,
)

from triochat.backplane import Claim
from triochat.core import events as ev
from triochat.core.hub import USERS_SHOWN, Hub, Member
from triochat.protocol import line as p

coredis = pytest.importorskip("coredis")

from triochat.backplane.redis import RedisBackplane, RedisOptions, scripts  # noqa: E402
from triochat.backplane.redis.link import describe, quiet_coredis  # noqa: E402
from triochat.backplane.redis.replica import Replica  # noqa: E402
from triochat.backplane.redis.wire import Whereabouts, decode_event  # noqa: E402


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not answers(TEST_REDIS):
        unavailable(f"no Redis answers at {TEST_REDIS} (set TRIOCHAT_TEST_REDIS)")
    return TEST_REDIS


@pytest.fixture
async def private_redis(redis_url: str) -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    yield server
    await server.stop()


class Linked:
    """A hub on a RedisBackplane, its link running in the test's nursery."""

    def __init__(self, url: str, cluster: str, *, quiet_above: int = 0, **options: Any) -> None:
        self.backplane = RedisBackplane(
            RedisOptions(url=url, cluster=cluster, **{**FAST, **options})
        )
        self.hub = Hub(
            history=5,
            clock=lambda: 1_700_000_000.0,
            backplane=self.backplane,
            quiet_above=quiet_above,
        )

    async def start(self, nursery: trio.Nursery) -> Linked:
        await nursery.start(self.backplane.run)
        return self

    def member(self, name: str) -> tuple[Member, trio.MemoryReceiveChannel[bytes]]:
        send, receive = trio.open_memory_channel[bytes](100)
        member = self.hub.register(name, send, lambda: None, p.LineDialect())
        assert isinstance(member, Member)
        self.hub.join(member, p.LOBBY)
        return member, receive


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[str]:
    name = unique_cluster()
    yield name
    await delete_cluster_keys(redis_url, name)


async def test_an_outage_logs_one_line_per_change_of_state(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture, nursery: trio.Nursery
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await Linked(private_redis.url, unique_cluster()).start(nursery)
    assert node.backplane.linked
    caplog.clear()
    await private_redis.stop()
    # Several attempts fail while it is down (each is logged at debug level only).
    await wait_until(
        lambda: sum("still cannot reach Redis" in r.getMessage() for r in caplog.records) >= 3
    )
    await private_redis.start()
    await wait_until(lambda: node.backplane.linked)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in loud] == ["triochat.backplane.redis"] * 2
    lost, back = (r.getMessage() for r in loud)
    assert lost.startswith("link to Redis lost (")
    assert "retrying in 0." in lost
    assert "\n" not in lost
    assert back == "link to Redis is back"
    assert all(r.exc_info is None for r in loud)
    # The tracebacks, ours and coredis's, are there for whoever asks for debug.
    assert any(r.exc_info for r in caplog.records if r.name == "triochat.backplane.redis")
    from_coredis = [r for r in caplog.records if r.name.startswith("coredis")]
    assert all(r.levelno == logging.DEBUG for r in from_coredis)


async def test_a_node_that_cannot_reach_redis_says_so_once(
    caplog: pytest.LogCaptureFixture, nursery: trio.Nursery, redis_url: str
) -> None:
    caplog.set_level(logging.DEBUG)
    redis = RedisServer()  # Never started: nothing listens on its port.
    node = await Linked(redis.url, unique_cluster()).start(nursery)
    await wait_until(
        lambda: sum("still cannot reach Redis" in r.getMessage() for r in caplog.records) >= 2
    )
    assert not node.backplane.linked
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1
    assert loud[0].startswith("cannot reach Redis (")
    assert "Connection refused" in loud[0]


def test_coredis_records_go_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    quiet_coredis()
    quiet_coredis()  # Once is enough; twice changes nothing.
    coredis_log = logging.getLogger("coredis")
    assert len(coredis_log.filters) == 1
    caplog.set_level(logging.WARNING)
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except OSError:
        coredis_log.exception("Connection attempt failed unexpectedly!")
    assert caplog.records == []
    caplog.set_level(logging.DEBUG)
    coredis_log.error("shown at debug")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("DEBUG", "shown at debug")]


def test_a_failure_is_described_in_one_line() -> None:
    inner = coredis.exceptions.ConnectionError("Unable to connect")
    inner.__cause__ = ConnectionRefusedError(111, "Connection refused")
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [inner])])
    assert describe(group) == "ConnectionError: Unable to connect (Connection refused)"
    assert describe(trio.TooSlowError()) == "TooSlowError: timed out"


async def test_claims_tell_taken_from_link_down(
    private_redis: RedisServer, nursery: trio.Nursery
) -> None:
    cluster = unique_cluster()
    a = await Linked(private_redis.url, cluster, timeout=0.3).start(nursery)
    b = await Linked(private_redis.url, cluster, timeout=0.3).start(nursery)
    assert await a.backplane.claim("Ann") is Claim.CLAIMED
    assert await b.backplane.claim("aNN") is Claim.TAKEN
    assert await a.backplane.claim("ann") is Claim.TAKEN  # Its own unused claim holds it too.
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)  # Connected, and nothing answers.
    try:
        assert await b.backplane.claim("ben") is Claim.LINK_DOWN
    finally:
        private_redis.process.send_signal(signal.SIGCONT)


async def test_scripts_are_loaded_again_when_redis_forgot_them(
    redis_url: str, cluster: str, nursery: trio.Nursery
) -> None:
    node = await Linked(redis_url, cluster).start(nursery)
    async with coredis.Redis.from_url(redis_url) as admin:
        await admin.script_flush()
        # EVALSHA finds no script, loads it and runs it: the claim works.
        assert await node.backplane.claim("ann") is Claim.CLAIMED
        assert await admin.get(f"triochat:{cluster}:name:ann") is not None
        await admin.script_flush()
        # A release runs inside a transaction: its NOSCRIPT loads them again, then it is
        # written once more.
        node.backplane.unclaim("ann")
        with trio.fail_after(5):
            while await admin.get(f"triochat:{cluster}:name:ann") is not None:  # noqa: ASYNC110
                await trio.sleep(0.01)


async def test_history_lists_hold_encoded_events(
    redis_url: str, cluster: str, nursery: trio.Nursery
) -> None:
    node = await Linked(redis_url, cluster).start(nursery)
    ann, _ = node.member("ann")
    node.hub.say(ann, p.LOBBY, ["one", "two"])
    node.hub.act(ann, p.LOBBY, "waves")
    async with coredis.Redis.from_url(redis_url) as admin:
        key = f"triochat:{cluster}:history:{p.LOBBY}"
        with trio.fail_after(5):
            while await admin.llen(key) < 3:  # noqa: ASYNC110
                await trio.sleep(0.01)
        stored = [decode_event(raw) for raw in reversed(await admin.lrange(key, 0, -1))]
    # The joins are not kept; the events are the hub's, numbers and times included.
    assert stored == [
        ev.Said(p.LOBBY, 2, 1_700_000_000.0, "ann", "one"),
        ev.Said(p.LOBBY, 3, 1_700_000_000.0, "ann", "two"),
        ev.Acted(p.LOBBY, 4, 1_700_000_000.0, "ann", "waves"),
    ]
    assert node.hub.recent(p.LOBBY, 5) == stored  # What came back through the channel.


async def test_a_dead_nodes_member_of_several_rooms_leaves_each(
    redis_url: str, cluster: str, nursery: trio.Nursery
) -> None:
    a = Linked(redis_url, cluster)
    a_link = trio.CancelScope()
    nursery.start_soon(_run, a, a_link)
    await wait_until(lambda: a.backplane.linked)
    b = await Linked(redis_url, cluster).start(nursery)
    ann, _ = a.member("ann")
    a.hub.join(ann, "#dev")
    ben, inbox = b.member("ben")
    b.hub.join(ben, "#dev")
    # The replica on B knows ann is in both rooms.
    await wait_until(lambda: b.backplane.remote_users("#dev") == ["ann"])
    assert b.backplane.remote_rooms() == {p.LOBBY: 1, "#dev": 1}
    assert b.hub.rooms() == {p.LOBBY: 2, "#dev": 2}
    while True:  # Drain what B's member has seen so far.
        try:
            inbox.receive_nowait()
        except trio.WouldBlock:
            break
    a_link.cancel()  # Node A dies without a word; its heartbeat key expires.
    seen: list[str] = []
    with trio.fail_after(5):
        while len([line for line in seen if "(connection lost)" in line]) < 2:
            seen.extend((await inbox.receive()).decode().splitlines())
    left = sorted(line.split("] ", 1)[1] for line in seen if "(connection lost)" in line)
    assert left == ["* ann left #dev (connection lost)", "* ann left #lobby (connection lost)"]
    assert b.backplane.remote_count() == 0
    assert await b.backplane.claim("ann") is Claim.CLAIMED


_BIG = "#big"
_QUIET_ABOVE = 59


class _Crowd:
    """Members of one Linked node's big room (not in the lobby; outboxes never drained)."""

    def __init__(self, node: Linked) -> None:
        self.node = node
        self.members: dict[str, Member] = {}
        self._inboxes: list[trio.MemoryReceiveChannel[bytes]] = []

    def add(self, name: str) -> None:
        send, receive = trio.open_memory_channel[bytes](10_000)
        member = self.node.hub.register(name, send, lambda: None, p.LineDialect())
        assert isinstance(member, Member), member
        self.node.hub.join(member, _BIG)
        self.members[name] = member
        self._inboxes.append(receive)

    def here(self) -> list[str]:
        room = self.node.hub._rooms.get(_BIG)
        return [m.name for m in room.members] if room is not None else []


def _order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda name: (p.name_sort_key(name), name))


def _listing(crowd: _Crowd, crowds: list[_Crowd]) -> tuple[object, object]:
    """What ``crowd``'s node lists of the big room, and what a full count of ``crowds`` says."""
    everyone = _order([n for c in crowds for n in c.here()])
    others = _order([n for c in crowds if c is not crowd for n in c.here()])
    backplane, hub = crowd.node.backplane, crowd.node.hub
    listed = hub._user_list(hub._rooms[_BIG])
    shown = everyone[:USERS_SHOWN] if len(everyone) > _QUIET_ABOVE else everyone
    found = (backplane.remote_users(_BIG), backplane.remote_count_in(_BIG), listed.names)
    return (found, listed.total), ((others, len(others), tuple(shown)), len(everyone))


async def _converge(crowds: list[_Crowd]) -> None:
    """Wait until every node's list agrees with a full count (presence travels through
    Redis), then check it (so that a timeout says what differs)."""
    with trio.move_on_after(5):
        # State of this process that nothing announces: nothing to wait on but the answer.
        while any(found != want for found, want in (_listing(c, crowds) for c in crowds)):  # noqa: ASYNC110
            await trio.sleep(0.02)
    for crowd in crowds:
        found, want = _listing(crowd, crowds)
        assert found == want


async def test_a_big_room_over_two_nodes_is_counted_and_listed_from_each_replicas_index(
    redis_url: str, cluster: str, nursery: trio.Nursery
) -> None:
    a = Linked(redis_url, cluster, quiet_above=_QUIET_ABOVE)
    a_link = trio.CancelScope()
    nursery.start_soon(_run, a, a_link)
    await wait_until(lambda: a.backplane.linked)
    on_a = _Crowd(a)
    for i in range(0, _QUIET_ABOVE, 2):
        on_a.add(f"{'U' if i % 3 == 0 else 'u'}{i:02}")
    async with coredis.Redis.from_url(redis_url) as admin:  # B's snapshot will have them
        presence = a.backplane.keys.presence
        with trio.fail_after(5):
            while await admin.hlen(presence) < len(on_a.members):  # noqa: ASYNC110
                await trio.sleep(0.02)
    b = await Linked(redis_url, cluster, quiet_above=_QUIET_ABOVE).start(nursery)
    on_b = _Crowd(b)
    crowds = [on_a, on_b]
    for i in range(1, _QUIET_ABOVE, 2):  # just below the threshold: every name
        on_b.add(f"{'U' if i % 3 == 0 else 'u'}{i:02}")
    await _converge(crowds)
    on_b.add("u59")  # just above it: the first names and the count
    await _converge(crowds)
    # Renames (a change of case keeps the key), and leaves among the first names and after.
    a.hub.rename(on_a.members["u02"], "zz02")
    a.hub.rename(on_a.members["u04"], "U04")
    b.hub.rename(on_b.members["u55"], "Aa55")
    await _converge(crowds)
    a.hub.part(on_a.members["u08"], _BIG, "bye")
    b.hub.leave(on_b.members["U57"], "quit")
    await _converge(crowds)
    a_link.cancel()  # Node A dies: B reaps it, and forgets its users room by room.
    await wait_until(lambda: b.backplane.remote_count() == 0)
    await _converge([on_b])
    assert b.backplane.remote_rooms() == {}


async def _run(node: Linked, scope: trio.CancelScope) -> None:
    with scope:
        await node.backplane.run()


async def test_history_written_before_events_is_kept_as_legacy_lines(
    redis_url: str, cluster: str, nursery: trio.Nursery
) -> None:
    async with coredis.Redis.from_url(redis_url) as admin:
        key = f"triochat:{cluster}:history:{p.LOBBY}"
        # Newest first, as LPUSH left them; one entry is neither a v1 line nor a record.
        await admin.rpush(
            key, [b"[12:00:01] <ann> second\n", b'["Junk"]', b"[12:00:00] * ann waves\n"]
        )
        await admin.sadd(f"triochat:{cluster}:rooms", [p.LOBBY])
    node = await Linked(redis_url, cluster).start(nursery)
    assert node.hub.recent(p.LOBBY, 5) == [
        ev.Legacy(p.LOBBY, 1, 0.0, "[12:00:00] * ann waves"),
        ev.Legacy(p.LOBBY, 2, 0.0, "[12:00:01] <ann> second"),
    ]
    _, inbox = node.member("ann2")
    assert inbox.receive_nowait().decode().startswith("[12:00:00] * ann waves\n")


def test_the_replica_counts_each_user_in_each_of_its_rooms() -> None:
    replica = Replica("here")
    replica.load(
        [
            ("ann", "a", "ann", ("#lobby", "#dev"), None, None),
            ("me", "here", "me", ("#lobby",), None, None),
        ]
    )
    assert (replica.users("#dev"), replica.rooms(), len(replica)) == (
        ["ann"],
        {"#lobby": 1, "#dev": 1},
        1,
    )  # This node's own users are the hub's business, not the replica's.
    replica.apply(Whereabouts("b", "ben", "ben", ()))  # In no room, but online.
    replica.apply(Whereabouts("here", "cy", "cy", ("#dev",)))
    assert (replica.name("ben"), replica.name("cy"), len(replica)) == ("ben", None, 2)
    # Only a user's own node says it is gone (the key may have moved on a rename).
    replica.apply(Whereabouts("b", "ann", "ann", None))
    assert replica.name("ann") == "ann"
    replica.apply(Whereabouts("a", "ann", "ann", None))
    assert (replica.name("ann"), replica.rooms()) == (None, {})


def test_the_replicas_room_index_agrees_with_a_scan_of_every_user() -> None:
    """Through arrivals, room changes, renames, takeovers, departures and snapshots, each
    room's count, names (in list order) and first names are those of a full scan."""
    rng = random.Random(11)
    replica = Replica("here")
    truth: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # key -> node, name, rooms
    rooms = ("#lobby", "#a", "#b", "#c")
    names = [f"{c}{i}" for c in "aBcD" for i in range(6)]

    def agrees() -> None:
        for room in (*rooms, "#none"):
            held = sorted(
                ((p.name_sort_key(n), n) for node, n, r in truth.values() if room in r),
            )
            assert replica.users(room) == [n for _, n in held]
            assert replica.count_in(room) == len(held)
            assert list(replica.first(room, 3)) == held[:3]
        expected = Counter(r for _, _, rs in truth.values() for r in rs)
        assert replica.rooms() == dict(expected)

    for _ in range(600):
        key = rng.choice(names).lower()
        node = rng.choice(("a", "b", "here"))
        action = rng.random()
        if action < 0.55:  # arrives, changes rooms, or renames (the name keeps its key here)
            name = key.upper() if rng.random() < 0.3 else key
            placed = tuple(r for r in rooms if rng.random() < 0.5)
            replica.apply(Whereabouts(node, key, name, placed))
            if node != "here":
                truth[key] = (node, name, placed)
        elif action < 0.8:  # gone (only its own node's word counts)
            replica.apply(Whereabouts(node, key, key, None))
            if truth.get(key, ("",))[0] == node:
                del truth[key]
        elif action < 0.95:  # taken over by another node (or by this one)
            replica.moved(key, node)
            if node == "here":
                truth.pop(key, None)
            elif key in truth:
                truth[key] = (node, *truth[key][1:])
        else:  # a relink's snapshot: this node's own users are left out
            entries = [(k, n, name, r, None, None) for k, (n, name, r) in truth.items()]
            entries.append(("me", "here", "me", ("#a",), None, None))
            replica.load(entries)
        agrees()
    replica.clear()
    truth.clear()
    agrees()


def test_a_failure_whose_causes_loop_is_still_described() -> None:
    from triochat.backplane.redis.link import describe

    outer = ConnectionError("Unable to connect")
    inner = OSError(111, "Connection refused")
    outer.__cause__ = inner
    inner.__cause__ = outer  # a cycle: the description must still end
    assert describe(outer) == "ConnectionError: Unable to connect (Connection refused)"


async def test_every_script_compiles_and_is_loaded_by_its_sha(redis_url: str) -> None:
    async with coredis.Redis.from_url(redis_url) as admin:
        await scripts.load(admin)  # a Lua syntax error would raise here
        assert all(await admin.script_exists([script.sha for script in scripts.ALL]))
