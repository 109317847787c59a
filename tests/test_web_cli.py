"""``serve --web-*``: the web door's options, from the command line, the environment or a file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from triochat.cli import main, serve as serve_cli
from triochat.server.run import ServeConfig
from triochat.server.web import WebConfig

CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in ("TRIOCHAT_CONFIG", "TRIOCHAT_WEB_PORT", "TRIOCHAT_WEB_ORIGIN", "TRIOCHAT_PORT")
}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServeConfig]:
    """Stub out the server: each ``serve`` run records the ServeConfig it would run."""
    configs: list[ServeConfig] = []

    async def record(config: ServeConfig) -> None:
        configs.append(config)

    monkeypatch.setattr(serve_cli, "_serve", record)
    return configs


def serve(*args: str, **env: str) -> Result:
    return CliRunner().invoke(main, ["serve", *args], env={**CLEAN_ENV, **env})


def test_no_web_port_no_web_door(served: list[ServeConfig]) -> None:
    assert serve().exit_code == 0
    assert served[0].web is None


def test_the_web_options_make_the_web_config(served: list[ServeConfig]) -> None:
    result = serve(
        "--web-port",
        "8080",
        "--web-origin",
        "https://a.example",
        "--web-origin",
        "https://b.example",
        "--web-ping-timeout",
        "5",
    )
    assert result.exit_code == 0, result.output
    assert served[0].web == WebConfig(
        port=8080, origins=("https://a.example", "https://b.example"), ping_timeout=5
    )


def test_a_config_file_s_web_section(tmp_path: Path, served: list[ServeConfig]) -> None:
    path = tmp_path / "triochat.toml"
    path.write_text('[web]\nport = 0\norigin = ["https://chat.example.org"]\nhost = "::1"\n')
    result = serve("--config", str(path))
    assert result.exit_code == 0, result.output
    assert served[0].web == WebConfig(port=0, host="::1", origins=("https://chat.example.org",))
    assert serve("--config", str(path), TRIOCHAT_WEB_PORT="9000").exit_code == 0
    assert served[1].web is not None
    assert served[1].web.port == 9000  # the environment beats the file


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--web-origin", "https://a.example"],
            "Invalid value for '--web-origin': applies only with --web-port",
        ),
        (
            ["--web-port", "0", "--web-origin", "a.example"],
            "Invalid value for --web-origin: an origin is scheme://host[:port], not 'a.example'",
        ),
    ],
)
def test_web_mistakes_are_usage_errors(
    args: list[str], error: str, served: list[ServeConfig]
) -> None:
    result = serve(*args)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {error}"
    assert served == []
