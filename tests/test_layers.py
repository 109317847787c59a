"""The tree is the architecture: what each layer may import."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module",
    [
        "triochat",
        "triochat.protocol.line",
        "triochat.protocol.web",
        "triochat.core.events",
        "triochat.core.records",
    ],
)
def test_the_sans_io_layers_import_no_io(module: str) -> None:
    loaded = _imported_by(module)
    io = {name for name in loaded if name.split(".")[0] in ("trio", "urwid", "coredis", "click")}
    assert io == set()
    assert not any(name.startswith(("triochat.server", "triochat.client")) for name in loaded)


def test_the_core_does_not_import_the_server_or_the_client() -> None:
    loaded = _imported_by("triochat.core.hub")
    assert not any(
        name.startswith(("triochat.server", "triochat.client", "triochat.cli")) for name in loaded
    )
    assert "coredis" not in loaded


def test_the_package_names_load_on_first_use() -> None:
    import triochat

    assert triochat.Hub.__module__ == "triochat.core.hub"
    assert triochat.ChatServer.__module__ == "triochat.server.listener"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        triochat.nope  # noqa: B018


def test_a_server_without_a_web_port_loads_no_http_stack() -> None:
    loaded = _imported_by("triochat.cli")
    assert {"wsproto", "h11", "triochat.server.web", "triochat.protocol.web"}.isdisjoint(loaded)
