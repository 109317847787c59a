"""The IRC dialect, sans-IO: what irssi, WeeChat, HexChat and IRC bots speak.

:mod:`.wire` frames, parses and writes messages (with IRCv3 tags);
the other modules build on it and nothing here imports trio.
"""

from .wire import (
    FORMATTING as FORMATTING,
    MAX_LINE as MAX_LINE,
    MAX_TAGS as MAX_TAGS,
    NEED_DATA as NEED_DATA,
    InputTooLong as InputTooLong,
    IRCError as IRCError,
    IRCFramer as IRCFramer,
    Malformed as Malformed,
    MalformedMessage as MalformedMessage,
    Message as Message,
    Received as Received,
    clean_text as clean_text,
    format_message as format_message,
    message as message,
    parse as parse,
    scrub as scrub,
    serialize as serialize,
    split_utf8 as split_utf8,
    token as token,
)
