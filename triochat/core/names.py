"""Who may be called what: the rules for user names and the key names are compared by.

Names that look the same are the same name. :func:`name_key` folds a name to
its Unicode TR39 confusable skeleton after NFKC and case folding, so ``ann``
spelt with a Cyrillic ``a`` (U+0430) and the Latin ``ann`` share a key;
:func:`name_error` refuses names that mix scripts and names with invisible or
direction-changing characters. Pure functions over the tables in
:mod:`._unicode_names` (generated from ICU by ``tools/gen_unicode_names.py``),
so nothing is downloaded or needed at run time.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from typing import Final, Literal, get_args

from . import _unicode_names as _data

NAME_MAX: Final = 24
NamePolicy = Literal["unicode", "ascii"]
NAME_POLICIES: Final[tuple[NamePolicy, ...]] = get_args(NamePolicy)
"""``unicode`` (the default): letters of any one script; ``ascii``: only A-Z, a-z, 0-9, _, -."""

NAME_RULES: Final = f"a name is 1 to {NAME_MAX} letters, digits, _ or -"
ASCII_NAME_RULES: Final = f"a name is 1 to {NAME_MAX} ASCII letters, digits, _ or -"

# \w is Unicode-aware: letters and digits of any script, plus "_".
_NAME_RE: Final = re.compile(rf"[\w-]{{1,{NAME_MAX}}}")
_ASCII_NAME_RE: Final = re.compile(rf"[A-Za-z0-9_-]{{1,{NAME_MAX}}}", re.ASCII)


def name_error(name: str, policy: NamePolicy = "unicode") -> str | None:
    """Return why ``name`` is not a valid user name under ``policy``, or ``None`` if it is."""
    if policy == "ascii":
        if _ASCII_NAME_RE.fullmatch(name) is not None:
            return None
        rules = ASCII_NAME_RULES
    elif name.isascii():  # the usual case: no scripts to mix, nothing invisible
        if _NAME_RE.fullmatch(name) is not None:
            return None
        rules = NAME_RULES
    else:
        rules = NAME_RULES
    # Some invisible characters are letters to \w (U+3164 HANGUL FILLER), so
    # they are looked for before a name is accepted.
    hidden = next((c for c in name if _invisible(c)), None)
    if hidden is not None:
        what = unicodedata.name(hidden, "a format character")
        return (
            f"Invalid name {name!r}: U+{ord(hidden):04X} ({what}) is invisible "
            f"or changes the text's direction; {rules}"
        )
    if policy == "unicode" and _NAME_RE.fullmatch(name) is not None:
        mixed = _mixed_scripts(name)
        if mixed is None:
            return None
        return (
            f"Invalid name {name!r}: it mixes {mixed[0]} and {mixed[1]} characters; a name "
            "is written in one script (digits, _ and - go with any)"
        )
    return f"Invalid name {name!r}: {rules}"


def skeleton(text: str) -> str:
    """The TR39 skeleton of ``text``: NFD, each character's confusable prototype, NFD."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", text).translate(_PROTOTYPES))


def name_key(name: str) -> str:
    """The form under which names are compared: NFKC, case folding, TR39 skeleton.

    Two names with one key are one name, for the hub and across a cluster. Case
    is folded before the skeleton is taken, so ``Ann`` and ``ann`` stay one name
    (the price: a capital ``I`` is not matched with a small ``l``); prototypes
    that are capitals (``0`` looks like ``O``) are folded again after. About
    0.5 µs for a short name, so it is not cached. A name that is its own key
    (``ann``) is returned itself, so a member keeps one string, not two alike.
    """
    key = skeleton(unicodedata.normalize("NFKC", name).casefold()).casefold()
    return name if key == name else key


def name_sort_key(name: str) -> str:
    """The order names are listed in: case-insensitive (NFKC and case folding), no skeleton."""
    return unicodedata.normalize("NFKC", name).casefold()


# --- the tables -------------------------------------------------------------------

_PROTOTYPES: Final[dict[int, str]] = _data.PROTOTYPES
_IGNORABLE_STARTS: Final = tuple(start for start, _ in _data.DEFAULT_IGNORABLE)

# Script codes a name may combine with another's, as TR39's "augmented script
# sets" do: Japanese mixes Han, Hiragana and Katakana; Korean Han and Hangul;
# Chinese Han and Bopomofo.
_AUGMENT: Final[dict[str, frozenset[str]]] = {
    "Hani": frozenset({"Hanb", "Jpan", "Kore"}),
    "Hira": frozenset({"Jpan"}),
    "Kana": frozenset({"Jpan"}),
    "Hang": frozenset({"Kore"}),
    "Bopo": frozenset({"Hanb"}),
}
_ANY: Final = frozenset({"Zyyy", "Zinh"})  # Common and Inherited go with every script


def _augmented(codes: str) -> frozenset[str] | None:
    scripts = frozenset(codes.split())
    if scripts & _ANY:
        return None
    return scripts.union(*(_AUGMENT.get(code, frozenset()) for code in scripts))


_SCRIPT_SETS: Final = tuple(map(_augmented, _data.SCRIPT_SETS))


def _scripts(char: str) -> frozenset[str] | None:
    """The augmented Script_Extensions of ``char``; ``None`` for Common and Inherited."""
    return _SCRIPT_SETS[_data.SCRIPT_RUNS[bisect_right(_data.SCRIPT_STARTS, ord(char)) - 1]]


def _script_name(scripts: frozenset[str]) -> str:
    return _data.SCRIPT_NAMES[min(code for code in scripts if code in _data.SCRIPT_NAMES)]


def _mixed_scripts(name: str) -> tuple[str, str] | None:
    """Two scripts ``name`` mixes; ``None`` if its resolved script set (TR39) is not empty."""
    resolved: frozenset[str] | None = None
    for char in name:
        scripts = _scripts(char)
        if scripts is None:
            continue
        if resolved is not None and not resolved & scripts:
            return _script_name(resolved), _script_name(scripts)
        resolved = scripts if resolved is None else resolved & scripts
    return None


def _invisible(char: str) -> bool:
    """Default_Ignorable_Code_Point or a format character: invisible, or bidi controls."""
    if unicodedata.category(char) == "Cf":
        return True
    code = ord(char)
    i = bisect_right(_IGNORABLE_STARTS, code) - 1
    return i >= 0 and code <= _data.DEFAULT_IGNORABLE[i][1]
