"""The one-room rules of the v1 line door, on top of the hub's multi-room API.

A v1 member is in exactly one room: ``/join`` moves it (it leaves the old
room with the reason ``joined #new``), and the commands that take a room mean
the one it is in.
"""

from __future__ import annotations

from . import events as ev
from .commands import (
    Command,
    Help,
    History,
    Invalid,
    Join,
    Me,
    Msg,
    Nick,
    Part,
    Quit,
    Rooms,
    Say,
    Users,
)
from .hub import Hub, Member


def handle(hub: Hub, member: Member, command: Command, help_lines: tuple[str, ...]) -> None:
    """Carry out one command from a one-room ``member``; ignored once it has left."""
    room = member.room
    if room is None or not hub.is_member(member):
        return  # its connection reads on until its last lines are out
    if not isinstance(command, Say):
        hub.lines_in += 1  # say() counts the lines it is given
    match command:
        case Say(text):
            hub.say(member, room, (text,))
        case Me(text):
            hub.act(member, room, text)
        case Msg(to, text):
            hub.private(member, to, text)
        case Join(name):
            if name in member.rooms:
                hub.join(member, name)  # which says the member is already there
            else:
                hub.part(member, room.name, f"joined {name}")
                hub.join(member, name)
        case Nick(name):
            hub.rename(member, name)
        case Users(everyone=everyone):
            hub.users(member, room, everyone=everyone)
        case Rooms():
            hub.room_list(member)
        case History(count):
            hub.replay(member, room.name, hub.recent(room.name, count))
        case Help():
            hub.tell(member, *(ev.Notice(line) for line in help_lines))
        case Invalid(message):
            hub.tell(member, ev.Error(message))
        case Part():
            hub.tell(member, ev.Error("Use /join #ROOM to move to another room"))
        case Quit(reason):
            hub.leave(member, reason or "quit", farewell="Bye!")
    hub.flush()
