"""The bot script parser: pure, no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from triochat.client.botscript import (
    DEFAULT_EXPECT_TIMEOUT,
    Expect,
    ScriptError,
    Send,
    Sleep,
    describe,
    parse_script,
)


def test_steps_keep_their_line_numbers() -> None:
    script = "# a greeter\n\nhello all\n  @sleep 0.5\n/me waves\n@expect joined #lobby\n/quit bye\n"
    steps = parse_script(script)
    assert [type(s) for s in steps] == [Send, Sleep, Send, Expect, Send]
    assert [s.lineno for s in steps] == [3, 4, 5, 6, 7]
    assert steps[0] == Send(3, "hello all")
    assert steps[1] == Sleep(4, 0.5)
    expect = steps[3]
    assert isinstance(expect, Expect)
    assert expect.pattern.pattern == "joined #lobby"
    assert expect.timeout == DEFAULT_EXPECT_TIMEOUT


def test_lines_are_sent_as_typed() -> None:
    steps = parse_script("  indented text  \r\n//not a command\n@@alice hi\n")
    assert steps == [Send(1, "  indented text  "), Send(2, "//not a command"), Send(3, "@alice hi")]


def test_chat_and_quit_are_recognized() -> None:
    chat, action, literal, quit_ = parse_script("hi\n/me waves\n//slash\n/exit now\n")
    assert isinstance(chat, Send)
    assert chat.is_chat
    assert not chat.is_quit
    assert isinstance(action, Send)
    assert not action.is_chat
    assert isinstance(literal, Send)
    assert literal.is_chat
    assert isinstance(quit_, Send)
    assert quit_.is_quit


@pytest.mark.parametrize(
    ("line", "regex", "timeout"),
    [
        ("@expect <bob> hi 2.5", "<bob> hi", 2.5),
        ("@expect ^\\* Users in #lobby: .*bot1", "^\\* Users in #lobby: .*bot1", 10.0),
        ("@expect 42", "42", 10.0),  # a lone number is the regex, not a timeout
        ("@expect count 42 3", "count 42", 3.0),
    ],
)
def test_expect_regex_and_timeout(line: str, regex: str, timeout: float) -> None:
    (step,) = parse_script(line)
    assert isinstance(step, Expect)
    assert (step.pattern.pattern, step.timeout) == (regex, timeout)


@pytest.mark.parametrize(
    ("script", "lineno", "message"),
    [
        ("hi\n@sleep\n", 2, "@sleep needs seconds"),
        ("@sleep -1", 1, "@sleep needs seconds"),
        ("@sleep nan", 1, "@sleep needs seconds"),
        ("@sleep 1e9", 1, "@sleep needs seconds"),
        ("\n\n@expect", 3, "@expect needs a regular expression"),
        ("@expect ([a-z] 2", 1, "bad regular expression '([a-z]'"),
        ("@expect joined 0", 1, "timeout must be positive"),
        ("# c\n@slep 1", 2, "unknown directive @slep"),
        ("/quit\nhello", 2, "nothing may follow /quit (line 1)"),
    ],
)
def test_errors_name_the_line(script: str, lineno: int, message: str) -> None:
    with pytest.raises(ScriptError) as info:
        parse_script(script, source="greet.txt")
    assert info.value.lineno == lineno
    assert message in str(info.value)
    assert str(info.value).startswith(f"greet.txt, line {lineno}: ")


def test_describe() -> None:
    send, sleep, expect = parse_script("hi\n@sleep 2\n@expect x 3")
    assert [describe(s) for s in (send, sleep, expect)] == ["'hi'", "@sleep 2", "@expect x 3"]


def test_the_example_scripts_parse() -> None:
    examples = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.txt"))
    assert examples
    for path in examples:
        assert parse_script(path.read_text(), source=str(path))
