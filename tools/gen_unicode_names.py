"""Regenerate ``triochat/core/_unicode_names.py`` from the system's ICU (developers only).

The name rules need two tables Python's :mod:`unicodedata` lacks: the confusable
prototypes of Unicode TR39 (``confusables.txt``) and each character's
Script_Extensions. ICU is the reference implementation of both, so this script
asks the installed libicu (``apt-get install libicu-dev``) through ctypes and
writes a plain Python module; triochat itself never needs ICU. Run it, then
``ruff format`` the result:

    python tools/gen_unicode_names.py && ruff format triochat/core/_unicode_names.py
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "triochat" / "core" / "_unicode_names.py"
UCHAR_DEFAULT_IGNORABLE_CODE_POINT = 5


def _icu() -> tuple[ctypes.CDLL, ctypes.CDLL, str]:
    for version in range(90, 60, -1):
        try:
            uc = ctypes.CDLL(f"libicuuc.so.{version}")
            i18n = ctypes.CDLL(f"libicui18n.so.{version}")
        except OSError:
            continue
        return uc, i18n, f"_{version}"
    sys.exit("no libicu found (apt-get install libicu-dev)")


def main() -> None:
    uc, i18n, suffix = _icu()

    def fn(lib: ctypes.CDLL, name: str) -> ctypes._NamedFuncPointer:
        return getattr(lib, name + suffix)

    status = ctypes.c_int(0)
    open_checker = fn(i18n, "uspoof_open")
    open_checker.restype = ctypes.c_void_p
    checker = ctypes.c_void_p(open_checker(ctypes.byref(status)))
    assert status.value <= 0, status.value
    get_skeleton = fn(i18n, "uspoof_getSkeleton")
    get_skeleton.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_int),
    ]
    get_scx = fn(uc, "uscript_getScriptExtensions")
    get_scx.argtypes = [
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_int),
    ]
    short_name = fn(uc, "uscript_getShortName")
    short_name.restype = ctypes.c_char_p
    long_name = fn(uc, "uscript_getName")
    long_name.restype = ctypes.c_char_p
    names_of: dict[str, str] = {}
    has_property = fn(uc, "u_hasBinaryProperty")
    get_version = fn(uc, "u_getUnicodeVersion")
    version = (ctypes.c_uint8 * 4)()
    get_version(version)
    unicode_version = ".".join(map(str, version[:3]))
    icu_version = suffix[1:]

    def skeleton(text: str) -> str:
        data = text.encode("utf-16-le")
        out = ctypes.create_string_buffer(256)
        status = ctypes.c_int(0)
        n = get_skeleton(checker, 0, data, len(data) // 2, out, 128, ctypes.byref(status))
        assert status.value <= 0, (text, status.value)
        return out.raw[: 2 * n].decode("utf-16-le")

    def scripts(cp: int) -> str:
        codes = (ctypes.c_int * 64)()
        status = ctypes.c_int(0)
        n = get_scx(cp, codes, 64, ctypes.byref(status))
        assert status.value <= 0, (cp, status.value)
        for code in codes[:n]:
            names_of[short_name(code).decode()] = long_name(code).decode().replace("_", " ")
        return " ".join(sorted(short_name(code).decode() for code in codes[:n]))

    prototypes: dict[int, str] = {}
    ranges: list[tuple[int, str]] = []
    ignorable: list[tuple[int, int]] = []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        char = chr(cp)
        # The skeleton is NFD, the mapping, NFD again; storing each NFD-stable
        # character's skeleton lets the runtime do NFD, translate, NFD.
        if unicodedata.normalize("NFD", char) == char:
            mapped = skeleton(char)
            if mapped != char:
                prototypes[cp] = mapped
        found = scripts(cp)
        if not ranges or ranges[-1][1] != found:
            ranges.append((cp, found))
        if has_property(cp, UCHAR_DEFAULT_IGNORABLE_CODE_POINT):
            if ignorable and ignorable[-1][1] == cp - 1:
                ignorable[-1] = (ignorable[-1][0], cp)
            else:
                ignorable.append((cp, cp))

    def literal(text: str) -> str:
        return (
            '"'
            + "".join(
                c
                if " " <= c <= "~" and c not in '"\\'
                else f"\\U{ord(c):08x}"
                if ord(c) > 0xFFFF
                else f"\\u{ord(c):04x}"
                if ord(c) > 0xFF
                else f"\\x{ord(c):02x}"
                for c in text
            )
            + '"'
        )

    script_sets = sorted({s for _, s in ranges})
    lines = [
        "# ruff: noqa: E501",
        '"""Unicode tables for the name rules: made by tools/gen_unicode_names.py, do not edit.',
        "",
        f"From ICU {icu_version} (Unicode {unicode_version}): the TR39 confusable prototypes",
        "(confusables.txt), Script_Extensions and Default_Ignorable_Code_Point. Unicode data,",
        "copyright Unicode, Inc., used under the Unicode License v3",
        "(https://www.unicode.org/license.txt).",
        '"""',
        "",
        "from typing import Final",
        "",
        f'UNICODE_VERSION: Final = "{unicode_version}"',
        "",
        "# Each NFD-stable character that has one: its TR39 skeleton (already NFD).",
        "PROTOTYPES: Final[dict[int, str]] = {",
        *(f"    0x{cp:04x}: {literal(t)}," for cp, t in sorted(prototypes.items())),
        "}",
        "",
        "# The distinct Script_Extensions values, ISO 15924 codes joined by spaces.",
        "SCRIPT_SETS: Final[tuple[str, ...]] = (",
        *(f'    "{s}",' for s in script_sets),
        ")",
        "",
        "# Script_Extensions in runs: SCRIPT_STARTS[i] starts one of SCRIPT_SETS[SCRIPT_RUNS[i]].",
        "SCRIPT_STARTS: Final[tuple[int, ...]] = (",
        *(f"    0x{cp:04x}," for cp, _ in ranges),
        ")",
        "SCRIPT_RUNS: Final[tuple[int, ...]] = (",
        *(f"    {script_sets.index(s)}," for _, s in ranges),
        ")",
        "",
        "# The English name of each script code above.",
        "SCRIPT_NAMES: Final[dict[str, str]] = {",
        *(f'    "{code}": "{name}",' for code, name in sorted(names_of.items())),
        "}",
        "",
        "# Default_Ignorable_Code_Point, as inclusive ranges.",
        "DEFAULT_IGNORABLE: Final[tuple[tuple[int, int], ...]] = (",
        *(f"    (0x{a:04x}, 0x{b:04x})," for a, b in ignorable),
        ")",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"{OUT}: {len(prototypes)} prototypes, {len(ranges)} script runs, ICU {icu_version}")


if __name__ == "__main__":
    main()
