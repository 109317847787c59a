"""The commands' options: defaults from the config dataclasses, shared client options, help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from triochat.cli import bot as bot_cli, main, serve as serve_cli
from triochat.cli.options import FieldOption, field_default, field_option, given_fields
from triochat.client import join as join_mod
from triochat.client.bot import BotConfig, Summary
from triochat.client.connection import ConnectOptions
from triochat.client.join import JoinConfig
from triochat.server.listener import ServerConfig
from triochat.server.run import ServeConfig
from triochat.server.store import StoreConfig

CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in (
        "TRIOCHAT_HOST",
        "TRIOCHAT_PORT",
        "TRIOCHAT_NAME",
        "TRIOCHAT_PASSWORD",
        "TRIOCHAT_DB",
        "TRIOCHAT_REDIS",
        "TRIOCHAT_CONFIG",
    )
}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServeConfig]:
    configs: list[ServeConfig] = []

    async def record(config: ServeConfig) -> None:
        configs.append(config)

    monkeypatch.setattr(serve_cli, "_serve", record)
    return configs


def test_serve_without_options_is_the_dataclasses_defaults(served: list[ServeConfig]) -> None:
    result = CliRunner().invoke(main, ["serve", "--max-clients", "5"], env=CLEAN_ENV)
    assert result.exit_code == 0, result.output
    assert served == [ServeConfig(server=ServerConfig(max_clients=5))]


def test_with_db_and_redis_their_defaults_are_the_dataclasses(served: list[ServeConfig]) -> None:
    from triochat.backplane.redis import RedisOptions

    args = ["serve", "--max-clients", "5", "--history", "7", "--db", "chat.db"]
    result = CliRunner().invoke(main, [*args, "--redis", "redis://h:1/0"], env=CLEAN_ENV)
    assert result.exit_code == 0, result.output
    [config] = served
    assert config.store == StoreConfig(path=Path("chat.db"), history=7)
    assert config.redis == RedisOptions(url="redis://h:1/0", history=7)


def field_options(command: click.Command) -> list[FieldOption]:
    return [param for param in command.params if isinstance(param, FieldOption)]


def help_of(command: str, option: str) -> str:
    """The help text of ``command``'s ``option``, as ``--help`` shows it."""
    group = main
    assert isinstance(group, click.Group)
    cmd = group.commands[command]
    for param in cmd.params:
        if option in param.opts:
            record = param.get_help_record(click.Context(cmd))
            assert record is not None
            return record[1]
    raise AssertionError(f"{command} has no {option}")


@pytest.mark.parametrize("command", ["serve", "join", "bot"])
def test_help_shows_each_fields_default(command: str) -> None:
    group = main
    assert isinstance(group, click.Group)
    options = field_options(group.commands[command])
    assert options
    for option in options:
        owner = option.owner_class()
        assert owner is not None
        default = field_default(owner, option.field)
        shown = help_of(command, option.opts[0])
        if default is None or default is dataclasses.MISSING:
            assert "default:" not in shown
        else:
            assert f"default: {default}" in shown, shown


def test_a_new_field_needs_one_line() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Config:
        max_rooms_per_member: int = 50

    @click.command()
    @field_option(Config, "--max-rooms-per-member", type=click.IntRange(1), help="Rooms.")
    def command(**_: Any) -> None:
        ctx = click.get_current_context()
        click.echo(repr(Config(**given_fields(ctx, Config))))

    assert "Config(max_rooms_per_member=50)" in CliRunner().invoke(command, []).output
    result = CliRunner().invoke(command, ["--max-rooms-per-member", "3"])
    assert "Config(max_rooms_per_member=3)" in result.output
    assert "[default: 50; x>=1]" in CliRunner().invoke(command, ["--help"]).output


def test_a_misspelt_field_fails_at_declaration() -> None:
    with pytest.raises(LookupError, match="ServerConfig has no field 'max_clientz'"):
        field_option(ServerConfig, "--max-clientz")(lambda: None)


@pytest.fixture
def joined(monkeypatch: pytest.MonkeyPatch) -> list[JoinConfig]:
    """Stub out line mode: each ``join`` run records its JoinConfig."""
    configs: list[JoinConfig] = []

    async def record(config: JoinConfig) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr(join_mod, "run_line_mode", record)
    return configs


@pytest.fixture
def botted(monkeypatch: pytest.MonkeyPatch) -> list[BotConfig]:
    configs: list[BotConfig] = []

    async def record(_steps: object, config: BotConfig) -> Summary:
        configs.append(config)
        return Summary(
            bots=0, failures=[], sent=0, received=0, latencies=[], elapsed=0, interrupted=False
        )

    monkeypatch.setattr(bot_cli, "_run_bots", record)
    return configs


SHARED_ENV = {
    "TRIOCHAT_HOST": "10.1.2.3",
    "TRIOCHAT_PORT": "7100",
    "TRIOCHAT_NAME": "ann",
    "TRIOCHAT_PASSWORD": "pw",
}
EXPECTED = ConnectOptions(host="10.1.2.3", port=7100, password="pw")


def test_join_and_bot_read_the_same_environment(
    joined: list[JoinConfig], botted: list[BotConfig]
) -> None:
    result = CliRunner().invoke(main, ["join"], env={**CLEAN_ENV, **SHARED_ENV}, input="")
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["bot", "--script", "-"], env={**CLEAN_ENV, **SHARED_ENV}, input="hi\n"
    )
    assert result.exit_code == 0, result.output
    [join_config] = joined
    [bot_config] = botted
    assert join_config.connection == bot_config.connection == EXPECTED
    assert join_config.name == bot_config.name == "ann"


def test_join_takes_a_password_option(joined: list[JoinConfig]) -> None:
    args = ["join", "--name", "ann", "--password", "pw", "--host", "10.1.2.3", "--port", "7100"]
    result = CliRunner().invoke(main, args, env=CLEAN_ENV, input="")
    assert result.exit_code == 0, result.output
    assert joined[0].connection == EXPECTED


def test_client_defaults_are_the_dataclasses(
    joined: list[JoinConfig], botted: list[BotConfig]
) -> None:
    CliRunner().invoke(main, ["join", "--name", "ann"], env=CLEAN_ENV, input="")
    CliRunner().invoke(main, ["bot", "--script", "-"], env=CLEAN_ENV, input="hi\n")
    assert joined == [JoinConfig(name="ann")]
    assert botted == [BotConfig()]


def test_a_ca_implies_tls_for_both(
    joined: list[JoinConfig], botted: list[BotConfig], tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    CliRunner().invoke(main, ["join", "--name", "ann", "--ca", str(ca)], env=CLEAN_ENV, input="")
    CliRunner().invoke(main, ["bot", "--script", "-", "--ca", str(ca)], env=CLEAN_ENV, input="")
    assert joined[0].connection.tls
    assert botted[0].connection.tls


def test_help_texts_for_the_client_and_log_options() -> None:
    join_help = CliRunner().invoke(main, ["join", "--help"], terminal_width=1000).output
    for variable in ("TRIOCHAT_NAME", "TRIOCHAT_HOST", "TRIOCHAT_PORT", "TRIOCHAT_PASSWORD"):
        assert variable in join_help
    assert help_of("bot", "--host").startswith("Server address.")
    assert help_of("bot", "--port").startswith("Server port.")
    assert help_of("serve", "--log-level").startswith("Log messages at least this severe")


@pytest.mark.parametrize("env", [{}, {"TRIOCHAT_DB": ""}])
def test_an_empty_db_name_says_it_is_empty(env: dict[str, str], served: list[ServeConfig]) -> None:
    args = [] if env else ["--db", ""]
    result = CliRunner().invoke(main, ["serve", *args], env={**CLEAN_ENV, **env})
    if env:
        # An empty variable is unset, as click treats every empty variable.
        assert result.exit_code == 0, result.output
        assert served[0].store is None
        return
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '--db': is empty: give the database's file name"
    )
    assert served == []


# Fields that are not options on purpose: timings of the protocol itself, not limits an
# operator tunes. A new field is either an option (one line in triochat/cli/serve.py:
# ``@server_option("--max-rooms-per-member", type=..., help=...)``) or listed here.
NOT_OPTIONS = {
    ServerConfig: {"linger", "shutdown_grace", "password_delay", "password_delay_max"},
    StoreConfig: set(),
    ServeConfig: {"server", "store", "redis", "web", "irc"},  # built from the options above
}


@pytest.mark.parametrize("owner", [ServerConfig, StoreConfig, ServeConfig])
def test_every_config_field_is_a_serve_option(owner: type) -> None:
    group = main
    assert isinstance(group, click.Group)
    options = {
        option.field for option in field_options(group.commands["serve"]) if option.owner is owner
    }
    fields = {field.name for field in dataclasses.fields(owner)}
    if owner is StoreConfig:
        options.add("history")  # the server's --history
    assert fields - options == NOT_OPTIONS[owner]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--password", ""], "Invalid value for --password/TRIOCHAT_PASSWORD: must not be empty"),
        (["--tls-key", __file__], "Invalid value for --tls-key: needs --tls-cert too"),
    ],
)
def test_bad_combinations_are_usage_errors(
    args: list[str], error: str, served: list[ServeConfig]
) -> None:
    result = CliRunner().invoke(main, ["serve", *args], env=CLEAN_ENV)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {error}"
    assert served == []


def test_help_for_an_option_whose_extra_is_missing_says_so() -> None:
    def missing() -> type:
        raise ImportError("no coredis here")

    @click.command()
    @field_option(missing, "--heartbeat", type=float, help="Seconds.")
    def command(**_: Any) -> None:
        """A command."""

    result = CliRunner().invoke(command, ["--help"])
    assert "Seconds.  [default: (needs an extra)]" in result.output


def test_the_cli_loads_neither_urwid_nor_coredis_until_a_command_needs_them() -> None:
    code = "import sys, triochat.cli; print(sorted({'urwid', 'coredis'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"
