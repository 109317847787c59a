"""``triochat admin``: the accounts of a ``--db`` file, or of a cluster's Redis (``--redis``).

Not over the chat's network: on the file directly, or on the cluster's ``accounts``
hash, with each change published on its channel as a node publishes one, so every
running node takes it at once (and its ``--db`` file keeps a copy).

A password is read from a prompt (hidden, asked twice) or from
``TRIOCHAT_NEW_PASSWORD``, never from the command line, where ``ps`` would show it.
A running server sees a reset password at once, and a granted or taken admin role
from the account's next sign-in.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import click
import trio

from ..core.accounts import MAX_PASSWORD, password_error

if TYPE_CHECKING:
    from ..backplane.redis import RedisOptions
    from ..backplane.redis.accounts import ClusterAccounts
    from ..core.modstate import AccountSet
    from ..server.accounts import AccountStore

REGISTER_HINT: Final = "connect with that name and /register PASSWORD first"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Target:
    """What ``triochat admin`` works on: a ``--db`` file, or a cluster's Redis."""

    db: Path | None
    redis: RedisOptions | None


def _open(db: Path) -> AccountStore:
    """The file's accounts, migrated first (an older file is upgraded, as ``serve`` would)."""
    from ..server.accounts import AccountStore
    from ..server.store import StoreConfig, StoreError, _open_sync

    try:
        writer, reader, _, _ = _open_sync(StoreConfig(path=db, history=0))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(f"cannot use {db}: {exc}") from None
    writer.close()
    reader.close()
    return AccountStore.open(db)


def _in_file(db: Path | None, work: Callable[[AccountStore], T]) -> T:
    """``work`` done on the accounts of the file ``db`` (migrated first), closed after."""
    assert db is not None
    store = _open(db)
    try:
        return work(store)
    finally:
        store.close()


def _in_cluster(options: RedisOptions, work: Callable[[ClusterAccounts], Awaitable[T]]) -> T:
    """``work`` done on the cluster's accounts, its failures as the command's error."""
    from ..backplane.redis.accounts import ClusterAccounts, NoSharedAccounts
    from ..backplane.redis.link import connect, describe, is_link_error

    async def run() -> T | NoSharedAccounts:
        with trio.fail_after(options.timeout * 4):
            async with connect(options) as client:
                # Answered here: past the client's task group it would come in a group.
                try:
                    return await work(ClusterAccounts(client, options.cluster))
                except NoSharedAccounts as exc:
                    return exc

    try:
        result = trio.run(run)
        if isinstance(result, NoSharedAccounts):
            raise result
        return result
    except NoSharedAccounts:
        raise click.ClickException(
            f"cluster {options.cluster!r} keeps no accounts in {options.url}: is --cluster"
            " the one the nodes run with? (Before a node has linked, use --db on its file.)"
        ) from None
    except BaseException as exc:
        if isinstance(exc, trio.TooSlowError) or is_link_error(exc):
            raise click.ClickException(f"cannot reach {options.url}: {describe(exc)}") from None
        raise


@click.group()
@click.option(
    "--db",
    envvar="TRIOCHAT_DB",
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The server's SQLite file (its --db).",
)
@click.option(
    "--redis",
    "redis_url",
    metavar="redis://HOST:PORT/DB",
    help="Work on the accounts of the cluster on this Redis instead (the nodes' --redis).",
)
@click.option(
    "--cluster",
    default="triochat",
    show_default=True,
    help="With --redis: the cluster's name (the nodes' --cluster).",
)
@click.pass_context
def admin(ctx: click.Context, db: Path | None, redis_url: str | None, cluster: str) -> None:
    """Manage the accounts of a server's --db file, or of a cluster (--redis)."""
    source = ctx.get_parameter_source("cluster")
    if redis_url is None:
        if db is None:
            raise click.UsageError("give the server's --db file, or a cluster's --redis")
        if source is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--cluster needs --redis")
        ctx.obj = Target(db, None)
        return
    if db is not None:
        raise click.UsageError(
            "--db or --redis, not both: in a cluster the nodes' files are copies of Redis's"
        )
    try:
        from ..backplane.redis import RedisOptions
    except ImportError:
        from ..server.run import REDIS_EXTRA

        raise click.ClickException(f"--redis needs coredis: {REDIS_EXTRA}") from None
    try:
        ctx.obj = Target(None, RedisOptions(url=redis_url, cluster=cluster))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--redis/--cluster") from None


@admin.command("accounts")
@click.pass_obj
def list_accounts(target: Target) -> None:
    """List the registered names (admins marked)."""
    if target.redis is not None:
        listed = [
            (a.name, a.admin, a.created) for a in _in_cluster(target.redis, lambda c: c.entries())
        ]
    else:
        listed = _in_file(
            target.db, lambda store: [(a.name, a.admin, a.created) for a in store.accounts()]
        )
    if not listed:
        click.echo("No accounts.")
    for name, is_admin, when in listed:
        created = time.strftime("%Y-%m-%d", time.localtime(when))
        click.echo(f"{name}\t{'admin' if is_admin else '-'}\t{created}")


@admin.command("reset-password")
@click.argument("name")
@click.password_option(
    "--password",
    envvar="TRIOCHAT_NEW_PASSWORD",
    show_envvar=True,
    prompt="New password",
    help="Prefer the prompt or TRIOCHAT_NEW_PASSWORD: a command line is seen in ps.",
)
@click.pass_obj
def reset_password(target: Target, name: str, password: str) -> None:
    """Give NAME a new password (without the old one)."""
    error = password_error(password, MAX_PASSWORD)
    if error is not None:
        raise click.BadParameter(error, param_hint="--password")
    if target.redis is not None:
        from argon2 import PasswordHasher

        digest = PasswordHasher().hash(password)
        done = _in_cluster(
            target.redis,
            lambda c: c.change(name, lambda a: dataclasses.replace(a, hash=digest)),
        )
    else:
        done = _in_file(target.db, lambda store: store.reset_password(name, password))
    if not done:
        raise click.ClickException(f"{name} is not registered: {REGISTER_HINT}")
    click.echo(f"The password of {name} is reset.")


@admin.command("grant")
@click.argument("name")
@click.pass_obj
def grant(target: Target, name: str) -> None:
    """Make NAME a server admin (every room, /ban in any room)."""
    _set_admin(target, name, True)
    click.echo(f"{name} is a server admin.")


@admin.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke(target: Target, name: str) -> None:
    """Take the server-admin role from NAME."""
    _set_admin(target, name, False)
    click.echo(f"{name} is not a server admin any more.")


def _set_admin(target: Target, name: str, value: bool) -> None:
    if target.redis is not None:

        def role(account: AccountSet) -> AccountSet:
            return dataclasses.replace(account, admin=value)

        done = _in_cluster(target.redis, lambda c: c.change(name, role))
    else:
        done = _in_file(target.db, lambda store: store.set_admin(name, value))
    if not done:
        raise click.ClickException(f"{name} is not registered: {REGISTER_HINT}")
