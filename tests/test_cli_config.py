"""``serve --config FILE``: a TOML file of settings, under the environment and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from triochat.cli import main, serve as serve_cli
from triochat.server.listener import ServerConfig
from triochat.server.run import ServeConfig
from triochat.server.store import StoreConfig

CLEAN_ENV: dict[str, str | None] = {
    "TRIOCHAT_PORT": None,
    "TRIOCHAT_DB": None,
    "TRIOCHAT_REDIS": None,
    "TRIOCHAT_CONFIG": None,
    "TRIOCHAT_MAX_CLIENTS": None,
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


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "triochat.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_file_sets_options_and_sections(tmp_path: Path, served: list[ServeConfig]) -> None:
    path = write(
        tmp_path,
        """
port = 7100
max-clients = 100
rate = 0
password = "from the file"

[db]
path = "chat.db"
queue = 30
flush-timeout = 0.5

[redis]
url = "redis://127.0.0.1:6379/3"
node-ttl = 9

[tls]
handshake-timeout = 4

[metrics]
port = 9407
""",
    )
    result = serve("--config", str(path))
    assert result.exit_code == 0, result.output
    [config] = served
    assert config.server == ServerConfig(
        port=7100, max_clients=100, rate=0, password="from the file", tls_handshake_timeout=4
    )
    assert config.store == StoreConfig(path=Path("chat.db"), queue=30, flush_timeout=0.5)
    assert config.redis is not None
    assert (config.redis.url, config.redis.node_ttl) == ("redis://127.0.0.1:6379/3", 9)
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9407)


def test_command_line_beats_environment_beats_file_beats_default(
    tmp_path: Path, served: list[ServeConfig]
) -> None:
    path = write(tmp_path, "port = 7100\nhistory = 30\nburst = 5\n")
    result = serve("--config", str(path), "--port", "7300", TRIOCHAT_PORT="7200")
    assert result.exit_code == 0, result.output
    result = serve(TRIOCHAT_CONFIG=str(path), TRIOCHAT_PORT="7200", TRIOCHAT_HISTORY="40")
    assert result.exit_code == 0, result.output
    first, second = served
    assert (first.server.port, first.server.history, first.server.burst) == (7300, 30, 5)
    assert (second.server.port, second.server.history, second.server.burst) == (7200, 40, 5)
    # What neither says is the dataclass's default.
    assert first.server.rate == ServerConfig().rate


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("max_clients = 5\n", "unknown key 'max_clients' in {path} (did you mean 'max-clients'?)"),
        ("[db]\nbatch_max = 5\n", "unknown key 'batch_max' in [db] in {path}"),
        ("[redis]\nuri = 'redis://x'\n", "unknown key 'uri' in [redis] in {path}"),
        ("[db.more]\nx = 1\n", "unknown table [db.more] in {path}"),
        ("port = \n", "{path} is not valid TOML"),
        ("max-clients = 2.5\n", "'max-clients' in {path} must be a whole number, not 2.5"),
        ("max-clients = true\n", "'max-clients' in {path} must be a whole number, not True"),
    ],
)
def test_a_bad_file_is_a_one_line_error_naming_the_file(
    tmp_path: Path, text: str, error: str, served: list[ServeConfig]
) -> None:
    path = write(tmp_path, text)
    result = serve("--config", str(path))
    assert result.exit_code == 2
    last = result.output.splitlines()[-1]
    assert last.startswith("Error: Invalid value for '--config': ")
    assert error.format(path=path) in last
    assert served == []


def test_a_bad_value_in_the_file_names_the_option(
    tmp_path: Path, served: list[ServeConfig]
) -> None:
    result = serve("--config", str(write(tmp_path, "port = 'seven'\n")))
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.output
    assert served == []


def test_a_feature_setting_in_the_file_without_the_feature_is_an_error(
    tmp_path: Path, served: list[ServeConfig]
) -> None:
    path = write(tmp_path, "[db]\nqueue = 30\n")
    result = serve("--config", str(path))
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for '--db-queue': set in {path}, but applies only with --db"
    )
    # With --db on the command line, the file's limit applies.
    result = serve("--config", str(path), "--db", "chat.db")
    assert result.exit_code == 0, result.output
    assert served[0].store == StoreConfig(path=Path("chat.db"), queue=30)


def test_a_missing_file_is_a_usage_error() -> None:
    result = serve("--config", "/nonexistent/triochat.toml")
    assert result.exit_code == 2
    assert "'/nonexistent/triochat.toml' does not exist" in result.output


def test_the_documented_example_is_accepted(tmp_path: Path, served: list[ServeConfig]) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    for name in ("cert", "key"):
        (tmp_path / f"{name}.pem").write_text("")
        example = example.replace(f"/etc/triochat/{name}.pem", str(tmp_path / f"{name}.pem"))
    result = serve("--config", str(write(tmp_path, example)))
    assert result.exit_code == 0, result.output
    [config] = served
    assert config.server.host == "0.0.0.0"
    assert config.store == StoreConfig(path=Path("/var/lib/triochat/chat.db"), batch_interval=0.1)
    assert config.tls_key == tmp_path / "key.pem"
    assert config.redis is not None
    assert config.redis.cluster == "chat"


@pytest.mark.parametrize(
    ("flag", "section", "key"),
    [
        ("--max-clients", None, "max-clients"),
        ("--db", None, "db.path"),
        ("--db-batch-max", None, "db.batch-max"),
        ("--tls-handshake-timeout", None, "tls.handshake-timeout"),
        ("--metrics-port", None, "metrics.port"),
        ("--redis", "redis", "redis.url"),
        ("--node-ttl", "redis", "redis.node-ttl"),
    ],
)
def test_file_keys_follow_the_option_names(flag: str, section: str | None, key: str) -> None:
    assert serve_cli.file_key(flag, section) == key
