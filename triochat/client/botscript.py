"""Bot scripts, sans-IO: text in, a list of steps out.

A script is one step per line (the format is documented in ``docs/bots.md``):

- any other line is sent to the server as typed (chat text or a ``/command``);
- blank lines and lines starting with ``#`` are skipped;
- ``@sleep SECONDS`` pauses;
- ``@expect REGEX [TIMEOUT]`` waits until a received line matches ``REGEX``;
- ``@@text`` sends ``@text`` (an unknown ``@word`` is an error, to catch typos).

Nothing here does I/O; :func:`parse_script` raises :class:`ScriptError` with
the line number of the first problem.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from ..protocol import line as p

DEFAULT_EXPECT_TIMEOUT: Final = 10.0
MAX_SLEEP: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``text`` as one line."""

    lineno: int
    text: str

    @property
    def is_chat(self) -> bool:
        """True for a line the server relays to the room, and so echoes to the sender."""
        return isinstance(p.parse_command(p.clean_text(self.text)), p.Say)

    @property
    def is_quit(self) -> bool:
        return isinstance(p.parse_command(p.clean_text(self.text)), p.Quit)


@dataclass(frozen=True, slots=True)
class Sleep:
    lineno: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Expect:
    """Wait up to ``timeout`` seconds for a received line that ``pattern`` matches (``search``)."""

    lineno: int
    pattern: re.Pattern[str]
    timeout: float


Step = Send | Sleep | Expect


class ScriptError(ValueError):
    """A script line that cannot be run; ``str()`` names the source and the line."""

    def __init__(self, source: str, lineno: int, message: str) -> None:
        super().__init__(f"{source}, line {lineno}: {message}")
        self.source = source
        self.lineno = lineno
        self.message = message


def _seconds(text: str) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_script(text: str, *, source: str = "<script>") -> list[Step]:
    """Parse a whole script.

    ``/quit`` may only be the last step: nothing after it could run. Every
    other check (regex syntax, numbers) is done here, so a bad script fails
    before any bot connects.
    """
    steps: list[Step] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if steps and isinstance(steps[-1], Send) and steps[-1].is_quit:
            raise ScriptError(source, lineno, f"nothing may follow /quit (line {steps[-1].lineno})")
        if stripped.startswith("@@"):
            steps.append(Send(lineno, line.lstrip()[1:]))
        elif stripped.startswith("@"):
            steps.append(_directive(source, lineno, stripped))
        else:
            steps.append(Send(lineno, line))
    return steps


def _directive(source: str, lineno: int, line: str) -> Step:
    word, _, rest = line.partition(" ")
    rest = rest.strip()
    if word == "@sleep":
        seconds = _seconds(rest)
        if seconds is None or seconds > MAX_SLEEP:
            raise ScriptError(
                source, lineno, f"@sleep needs seconds from 0 to {MAX_SLEEP:g}, got {rest!r}"
            )
        return Sleep(lineno, seconds)
    if word == "@expect":
        if not rest:
            raise ScriptError(source, lineno, "@expect needs a regular expression")
        regex, timeout = rest, DEFAULT_EXPECT_TIMEOUT
        # A trailing number is the timeout; a regex that must end in a number
        # can say so unambiguously with a timeout of its own.
        head, _, last = rest.rpartition(" ")
        seconds = _seconds(last)
        if head.strip() and seconds is not None:
            if seconds == 0:
                raise ScriptError(source, lineno, "@expect timeout must be positive")
            regex, timeout = head.strip(), seconds
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise ScriptError(source, lineno, f"bad regular expression {regex!r}: {exc}") from None
        return Expect(lineno, pattern, timeout)
    raise ScriptError(
        source, lineno, f"unknown directive {word} (use @sleep, @expect, or @@ to send a leading @)"
    )


def describe(step: Step) -> str:
    """A short description of a step, for error messages."""
    match step:
        case Send(_, text):
            return repr(text)
        case Sleep(_, seconds):
            return f"@sleep {seconds:g}"
        case Expect(_, pattern, timeout):
            return f"@expect {pattern.pattern} {timeout:g}"
