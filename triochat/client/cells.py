"""Terminal cell widths, counted so that no terminal shows a row wider than we think.

Terminals disagree on some characters: ``👍🏽`` (a thumb and a skin tone) is 2
cells in terminals that cluster graphemes and 4 in those that count each code
point (tmux 3.3, xterm, pyte); ``❤️`` (a heart and VS16) is 2 or 1. urwid counts
grapheme clusters, so on a code-point terminal a row it filled to the margin
is wider than the window, and the terminal drops what overflows. Here a
cluster counts as the wider of the two ways, so a wrapped row fits the window
on either kind of terminal: at worst a row ends a few cells early.
"""

from __future__ import annotations

from typing import Any, Final

import urwid
import wcwidth


def cluster_width(cluster: str) -> int:
    """The most cells any common terminal gives ``cluster`` (one grapheme cluster)."""
    grapheme = max(wcwidth.width(cluster, control_codes="ignore"), 0)
    if len(cluster) == 1:
        return grapheme
    per_point = sum(max(wcwidth.wcwidth(c), 0) for c in cluster)
    return max(grapheme, per_point)


def safe_width(text: str) -> int:
    """The most cells any common terminal needs for ``text`` (no newlines)."""
    if text.isascii():
        return len(text)
    return sum(cluster_width(c) for c in wcwidth.iter_graphemes(text))


class CellLayout(urwid.StandardTextLayout):
    """urwid's text layout, wrapping rows by :func:`safe_width` instead of urwid's own count.

    The segments still carry urwid's width, as its canvases expect; only the
    places where rows break move. Pure ASCII takes a fast path, which also keeps
    a pasted line of thousands of characters cheap to lay out.
    """

    def calculate_text_segments(self, text: Any, width: int, wrap: Any) -> Any:
        if not isinstance(text, str) or wrap not in ("space", "any") or "\t" in text:
            return super().calculate_text_segments(text, width, wrap)
        segments: list[list[tuple[int, ...]]] = []
        start = 0
        while True:
            end = text.find("\n", start)
            last = end == -1
            end = len(text) if last else end
            if text.isascii():
                self._wrap_ascii(text, start, end, width, wrap, segments)
            else:
                self._wrap_clusters(text, start, end, width, wrap, segments)
            if last:
                return segments
            start = end + 1

    @staticmethod
    def _wrap_ascii(
        text: str, idx: int, end: int, width: int, wrap: str, out: list[list[tuple[int, ...]]]
    ) -> None:
        while end - idx > width:
            pos = idx + width
            if wrap == "space":
                if text[pos] == " ":
                    out.append([(width, idx, pos), (0, pos)])
                    idx = pos + 1
                    continue
                space = text.rfind(" ", idx, pos)
                word_end = text.find(" ", pos, end)
                # A word longer than a row is cut anyway: fill this row with it first.
                if space > idx and (word_end if word_end != -1 else end) - space - 1 <= width:
                    out.append([(space - idx, idx, space), (0, space)])
                    idx = space + 1
                    continue
            out.append([(width, idx, pos)])
            idx = pos
        out.append([(end - idx, idx, end), (0, end)] if end > idx else [(0, end)])

    @staticmethod
    def _wrap_clusters(
        text: str, idx: int, end: int, width: int, wrap: str, out: list[list[tuple[int, ...]]]
    ) -> None:
        # (start, safe width, urwid's width, is a plain space) of each cluster of the line
        clusters: list[tuple[int, int, int, bool]] = []
        pos = idx
        for cluster in wcwidth.iter_graphemes(text[idx:end]):
            own = max(wcwidth.width(cluster, control_codes="ignore"), 0)
            clusters.append((pos, cluster_width(cluster), own, cluster == " "))
            pos += len(cluster)
        first = 0  # index of the first cluster of the row being filled
        while first < len(clusters):
            used = 0
            last = first
            while last < len(clusters) and used + clusters[last][1] <= width:
                used += clusters[last][1]
                last += 1
            last = max(last, first + 1)  # a cluster wider than the row gets a row of its own
            if last == len(clusters):
                row_start = clusters[first][0]
                own = sum(c[2] for c in clusters[first:])
                out.append([(own, row_start, end), (0, end)])
                return
            brk = last
            if wrap == "space" and not clusters[last][3]:
                for i in range(last - 1, first, -1):
                    if clusters[i][3]:
                        brk = i
                        break
                # A word longer than a row is cut anyway: fill this row with it first.
                word = 0
                for _, cells, _, space in clusters[brk + 1 :]:
                    if space:
                        break
                    word += cells
                if word > width:
                    brk = last
            row_start = clusters[first][0]
            row_end = clusters[brk][0]
            own = sum(c[2] for c in clusters[first:brk])
            if clusters[brk][3] and wrap == "space":
                out.append([(own, row_start, row_end), (0, row_end)])
                first = brk + 1
            else:
                out.append([(own, row_start, row_end)])
                first = brk
        out.append([(0, end)])


LAYOUT: Final = CellLayout()
