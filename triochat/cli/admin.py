"""``triochat admin``: the accounts of a ``--db`` file, worked on directly, not over the network.

A password is read from a prompt (hidden, asked twice) or from
``TRIOCHAT_NEW_PASSWORD``, never from the command line, where ``ps`` would show it.
A running server sees a reset password at once, and a granted or taken admin role
from the account's next sign-in.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from ..core.accounts import MAX_PASSWORD, password_error

if TYPE_CHECKING:
    from ..server.accounts import AccountStore

REGISTER_HINT: Final = "connect with that name and /register PASSWORD first"


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


@click.group()
@click.option(
    "--db",
    required=True,
    envvar="TRIOCHAT_DB",
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The server's SQLite file (its --db).",
)
@click.pass_context
def admin(ctx: click.Context, db: Path) -> None:
    """Manage the accounts of a server's --db file."""
    ctx.obj = db


@admin.command("accounts")
@click.pass_obj
def list_accounts(db: Path) -> None:
    """List the registered names (admins marked)."""
    store = _open(db)
    try:
        listed = store.accounts()
    finally:
        store.close()
    if not listed:
        click.echo("No accounts.")
    for account in listed:
        created = time.strftime("%Y-%m-%d", time.localtime(account.created))
        click.echo(f"{account.name}\t{'admin' if account.admin else '-'}\t{created}")


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
def reset_password(db: Path, name: str, password: str) -> None:
    """Give NAME a new password (without the old one)."""
    error = password_error(password, MAX_PASSWORD)
    if error is not None:
        raise click.BadParameter(error, param_hint="--password")
    store = _open(db)
    try:
        if not store.reset_password(name, password):
            raise click.ClickException(f"{name} is not registered: {REGISTER_HINT}")
    finally:
        store.close()
    click.echo(f"The password of {name} is reset.")


@admin.command("grant")
@click.argument("name")
@click.pass_obj
def grant(db: Path, name: str) -> None:
    """Make NAME a server admin (every room, /ban in any room)."""
    _set_admin(db, name, True)
    click.echo(f"{name} is a server admin.")


@admin.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke(db: Path, name: str) -> None:
    """Take the server-admin role from NAME."""
    _set_admin(db, name, False)
    click.echo(f"{name} is not a server admin any more.")


def _set_admin(db: Path, name: str, value: bool) -> None:
    store = _open(db)
    try:
        if not store.set_admin(name, value):
            raise click.ClickException(f"{name} is not registered: {REGISTER_HINT}")
    finally:
        store.close()
