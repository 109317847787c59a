"""Moderation and accounts shared by the nodes of a cluster: two real hubs on a MemoryCluster,
no Redis, no sockets; time passes under ``autojump_clock`` (the same rules over real
Redis: ``test_cluster_moderation.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio
import trio.testing
from _accounts import open_accounts
from test_memory_cluster import LINE, T0, User, settle

from triochat.backplane import Claim
from triochat.backplane.memory import MemoryBackplane, MemoryCluster
from triochat.core.accounts import Request
from triochat.core.hub import Hub
from triochat.core.moderation import SERVER, Ban, Topic
from triochat.core.modstate import BanSet, Publishing, SharedModeration, TopicChange
from triochat.core.names import name_key
from triochat.server.accounts import AccountStore


class Node:
    """A hub whose moderation is shared through its MemoryBackplane, as a server's is."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.backplane: MemoryBackplane = cluster.backplane()
        self.moderation = SharedModeration(clock=trio.current_time, wall=lambda: T0)
        self.moderation.sinks.append(Publishing(self.backplane.publish_state))
        self.hub = Hub(clock=lambda: T0, backplane=self.backplane, moderation=self.moderation)

    async def join(self, name: str, room: str = "") -> User:
        assert await self.backplane.claim(name) is Claim.CLAIMED
        user = User(self.hub, name, LINE)
        if room:
            self.hub.join(user.member, room)
        return user


@pytest.fixture
def cluster() -> MemoryCluster:
    # (A clock fixture counts only as the test's own argument: pytest-trio looks there.)
    return MemoryCluster(history=5)


async def _start(cluster: MemoryCluster, nursery: trio.Nursery) -> Node:
    node = Node(cluster)
    await nursery.start(node.backplane.run)
    return node


async def test_a_ban_on_one_node_sends_the_member_out_on_the_other_and_keeps_it_out(
    cluster: MemoryCluster, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    bob = await b.join("bob", "#den")
    await settle()
    bob.lines()
    a.moderation.ban("#den", Ban("bob", trio.current_time() + 600, "ann", "spam"))
    await settle()
    assert bob.lines()[-2:] == [
        "* bob left #den (banned by ann: spam)",
        "! You left #den (banned by ann: spam)",
    ]
    assert "#den" not in bob.member.rooms
    ban = b.moderation.banned("#den", "bob")
    assert ban is not None
    assert b.moderation.remaining(ban.until) == "for 10m more"
    await trio.sleep(601)  # It ends on every node at the same time.
    assert b.moderation.banned("#den", "bob") is None


async def test_a_server_wide_ban_expels_the_member_on_the_other_node(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    mal = await b.join("mal")
    await settle()
    a.moderation.ban(SERVER, Ban(name_key("mal"), math.inf, "root", "trolling"))  # "rnal"
    await settle()
    assert "! You are out of the chat (banned by root: trolling)" in mal.lines()
    assert not b.hub.is_member(mal.member)
    assert mal.disconnects == 1
    assert b.moderation.banned(SERVER, name_key("mal")) is not None


async def test_a_kick_reaches_the_member_on_another_node(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    ann, bob = await a.join("ann", "#den"), await b.join("bob", "#den")
    await settle()
    assert not a.hub.kick_elsewhere(ann.member, "carl", "#den", "")  # nobody there
    assert not a.hub.kick_elsewhere(ann.member, "bob", "#elsewhere", "")
    assert a.hub.kick_elsewhere(ann.member, "BOB", "#den", "flooding")
    await settle()
    assert "! You left #den (kicked by ann: flooding)" in bob.lines()
    assert "* bob left #den (kicked by ann: flooding)" in ann.lines()
    b.hub.join(bob.member, "#den")  # allowed back at once
    await settle()
    assert "* bob joined #den" in ann.lines()


async def test_mutes_ops_and_topics_are_the_same_on_every_node(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    ann, carl = await a.join("ann", "#den"), await b.join("carl", "#den")
    a.moderation.op("#den", "ann")
    a.moderation.mute("#den", name_key("carl"), math.inf)
    a.hub.set_topic(ann.member, "#den", "Be kind")
    await settle()
    assert b.moderation.is_op("#den", "ann")
    carl.lines()
    carl.say("hello")
    await settle()
    assert carl.lines() == ["! You are muted in #den until lifted: not sent"]
    assert all("hello" not in line for line in ann.lines())
    dave = await b.join("dave")
    b.hub.join(dave.member, "#den")
    assert "* Topic of #den: Be kind (set by ann)" in dave.lines()
    assert a.moderation.deop("#den", "ann")
    assert a.moderation.unmute("#den", name_key("carl"))
    await settle()
    assert not b.moderation.is_op("#den", "ann")
    carl.say("at last")
    await settle()
    assert "<carl> at last" in ann.lines()


async def test_a_late_node_takes_the_clusters_state_and_conflicting_changes_converge(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    a.moderation.ban("#den", Ban("bob", math.inf, "ann", ""))
    # B lifts it before A's ban reached it: both end as the channel's order says.
    assert not b.moderation.unban("#den", "bob")
    b.moderation.ban("#den", Ban("bob", math.inf, "olga", "mine"))
    await settle()
    ban_a, ban_b = a.moderation.banned("#den", "bob"), b.moderation.banned("#den", "bob")
    assert ban_a is not None
    assert ban_b is not None
    assert ban_a.by == ban_b.by == "olga"
    c = await _start(cluster, nursery)
    ban_c = c.moderation.banned("#den", "bob")
    assert ban_c is not None
    assert ban_c.by == "olga"


async def test_when_the_cluster_loses_its_state_the_first_node_back_seeds_it(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a = await _start(cluster, nursery)
    a.moderation.set_topic("#den", Topic("Be kind", "ann", T0))
    await settle()
    cluster.lose_state()  # as a Redis restarted without its data
    a.backplane.relink()
    assert cluster.state is not None
    assert list(cluster.state.values()) == [TopicChange("#den", "Be kind", "ann", T0)]
    b = await _start(cluster, nursery)  # it knew nothing: it takes the cluster's
    assert b.moderation.topics["#den"].text == "Be kind"
    assert b.moderation.state() == a.moderation.state()


async def test_of_two_registrations_of_one_name_on_two_nodes_exactly_one_wins(
    cluster: MemoryCluster, nursery: trio.Nursery, tmp_path: Path
) -> None:
    nodes = [Node(cluster), Node(cluster)]
    stores = []
    for i, node in enumerate(nodes):
        accounts = open_accounts(tmp_path / f"{i}.db")
        accounts.share(node.backplane, None)
        node.hub.accounts = accounts
        stores.append(accounts)
        await nursery.start(node.backplane.run)
    outcomes = []

    async def register(accounts: AccountStore, password: str) -> None:
        outcomes.append(await accounts.perform(Request("register", "zed", password)))

    async with trio.open_nursery() as both:
        both.start_soon(register, stores[0], "first")
        both.start_soon(register, stores[1], "second")
    assert sorted(o.ok for o in outcomes) == [False, True]
    assert [o.error for o in outcomes if not o.ok] == ["zed is registered already"]
    await settle()
    assert all(accounts.registered("zed") for accounts in stores)
    # Only the winner's password opens it, on either node.
    winner = next(o.request.password for o in outcomes if o.ok)
    loser = next(o.request.password for o in outcomes if not o.ok)
    for accounts in stores:
        assert (await accounts.perform(Request("verify", "zed", winner))).ok
        assert not (await accounts.perform(Request("verify", "zed", loser))).ok
    # A password changed on one node counts on the other once the change has crossed.
    changed = await stores[1].perform(Request("change", "zed", winner, "new-one"))
    assert changed.ok
    await settle()
    assert not (await stores[0].perform(Request("verify", "zed", winner))).ok
    assert (await stores[0].perform(Request("verify", "zed", "new-one"))).ok
    assert (await stores[0].perform(Request("unregister", "zed", "new-one"))).ok
    await settle()
    assert not any(accounts.registered("zed") for accounts in stores)
    for accounts in stores:
        accounts.close()


async def test_a_ban_made_while_a_node_was_away_is_carried_out_when_it_links_again(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    bob = await b.join("bob", "#den")
    await settle()
    # As Redis would keep a ban that B's channel never brought it.
    assert cluster.state is not None
    ban = BanSet("#den", "bob", math.inf, "ann", "spam")
    cluster.state["ban\t#den\tbob"] = ban
    b.backplane.relink()
    assert "! You left #den (banned by ann: spam)" in bob.lines()
    assert a.moderation.banned("#den", "bob") is None  # only what came through its channel


async def test_a_ban_record_from_the_channel_is_not_told_back_as_this_nodes_own(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    published: list[object] = []
    b.moderation.sinks.append(Publishing(published.append))
    a.moderation.ban("#den", Ban("bob", math.inf, "ann", ""))
    await settle()
    assert published == []  # taken, not published again
    assert b.moderation.state() == [BanSet("#den", "bob", math.inf, "ann", "")]


async def test_operators_and_away_members_on_another_node_are_marked_in_the_user_list(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    ann = await a.join("ann", "#den")
    a.hub.set_account(ann.member, "ann")  # as its session does once she identified
    a.moderation.op("#den", "ann")
    bob = await a.join("bob", "#den")
    cat = await b.join("cat", "#den")
    a.hub.set_away(bob.member, "lunch")
    await settle()
    cat.lines()
    b.hub.users(cat.member, "#den")
    assert cat.lines() == ["* Users in #den: @ann, bob (away), cat"]
    # Back, and no longer identified: the marks go with it, wherever asked.
    a.hub.set_away(bob.member, None)
    a.hub.set_account(ann.member, None)
    await settle()
    b.hub.users(cat.member, "#den")
    assert cat.lines() == ["* Users in #den: ann, bob, cat"]


async def test_a_remote_away_member_answers_private_messages_and_its_marks_follow_a_rename(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    bob = await a.join("bob")  # in no room: still away for whoever messages it
    cat = await b.join("cat", "#den")
    a.hub.set_away(bob.member, "out")
    await settle()
    assert b.hub.away_of("BOB") == "out"
    b.hub.private(cat.member, "bob", "hi")
    await settle()
    assert "* bob is away: out" in cat.lines()
    assert await a.backplane.claim("rob") is Claim.CLAIMED
    a.hub.rename(bob.member, "rob")
    a.hub.join(bob.member, "#den")
    await settle()
    assert (b.hub.away_of("bob"), b.hub.away_of("rob")) == (None, "out")
    cat.lines()
    b.hub.users(cat.member, "#den")
    assert cat.lines() == ["* Users in #den: cat, rob (away)"]


async def test_every_page_of_a_long_user_list_marks_the_remote_members_it_shows(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    crowd: list[User] = []
    for i in range(60):
        crowd.append(await a.join(f"u{i:02}", "#hall"))
        await settle()
        for user in crowd:  # read, or the hub evicts them as too slow
            user.lines()
    a.hub.set_away(crowd[55].member, "gone")  # on the second page
    a.hub.set_account(crowd[1].member, "u01")
    a.moderation.op("#hall", "u01")
    zed = await b.join("zed", "#hall")
    await settle()
    zed.lines()
    b.hub.users(zed.member, "#hall", everyone=True)
    first, second = zed.lines()
    assert first.startswith("* Users in #hall: u00, @u01, u02,")
    assert "u54, u55 (away), u56" in second
    assert second.endswith("u59, zed")
