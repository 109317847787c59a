"""The terminal UI's text layout: no row wider than the window on any terminal, nothing dropped."""

from __future__ import annotations

import urwid
from hypothesis import given, strategies as st
from wcwidth import iter_graphemes as graphemes

from triochat.client.cells import LAYOUT, cluster_width, safe_width

# Clusters terminals disagree on, and plain ones.
PIECES = ["x", "yy", " ", "👍🏽", "❤️", "👨‍👩‍👧", "🇫🇷", "中文", "é", "e\u0301", "\u0301", "wrap|"]


def rows_of(text: str, width: int, wrap: str = "space") -> list[str]:
    """The text of each row, as the layout cuts it."""
    out = []
    for line in LAYOUT.layout(text, width, "left", wrap):  # type: ignore[arg-type]
        out.append("".join(text[seg[1] : seg[2]] for seg in line if len(seg) == 3))  # type: ignore[index]
    return out


def test_widths_take_the_wider_count() -> None:
    assert cluster_width("👍🏽") == 4  # 2 where graphemes cluster, 4 where code points count
    assert cluster_width("❤️") == 2  # 1 where the variation selector is ignored
    assert cluster_width("中") == 2
    assert safe_width("ab 中") == 5
    assert safe_width("plain ascii") == 11


def test_the_thumbs_wrap_whole() -> None:
    text = "x" * 10 + " 👍🏽👍🏽👍🏽 wrap|"
    assert rows_of(text, 12) == ["x" * 10, "👍🏽👍🏽👍🏽", "wrap|"]
    # urwid's own count would put two thumbs (8 cells in tmux) in 4 columns.
    assert urwid.Text(text).render((12,)).text[1].decode() != "👍🏽👍🏽👍🏽"


@given(
    st.lists(st.sampled_from(PIECES), max_size=40),
    st.integers(min_value=1, max_value=30),
    st.sampled_from(["space", "any"]),
)
def test_rows_fit_and_keep_every_character(pieces: list[str], width: int, wrap: str) -> None:
    text = "".join(pieces)
    rows = rows_of(text, width, wrap)
    # A cluster wider than the window (the family is 6 cells) gets a row of its own.
    assert all(safe_width(row) <= width or len(list(graphemes(row))) == 1 for row in rows)
    # Only the spaces a row breaks at are left out.
    assert "".join(rows).replace(" ", "") == text.replace(" ", "")
    if wrap == "any":
        assert "".join(rows) == text
