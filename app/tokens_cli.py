"""CLI for access control: `roi tokens create|list|revoke` (see `register`).

Whoever can run `roi` on the server can reach the database directly, so the CLI needs no token:
it acts as admin and is audited as `cli:<os user>`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from app.audit import record_audit
from app.auth.principal import Role, cli_principal
from app.auth.tokens import TokenError, create_token, list_tokens, revoke_token
from app.settings import get_settings

tokens = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    cli.add_typer(tokens, name="tokens")


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@tokens.command("create")
def tokens_create(
    role: Annotated[Role, typer.Option(help="viewer, finance, admin, or ingest.")],
    name: Annotated[str, typer.Option(help="Who or what uses it; unique among active tokens.")],
) -> None:
    """Create a token and print it once, alone on stdout (only its hash is stored)."""
    from app.database import make_engine

    principal = cli_principal()
    engine = make_engine(get_settings())
    try:
        with engine.begin() as conn:
            info, token = create_token(conn, name=name, role=role, created_by=principal.name)
            record_audit(conn, principal, "token.create", f"token:{info.id}",
                         {"name": info.name, "role": info.role.value})  # fmt: skip
    except TokenError as exc:
        _fail(str(exc))
        return
    finally:
        engine.dispose()
    typer.secho(
        f"token {info.id} {info.name!r} ({info.role.value}, {info.prefix}...) created; "
        "it is shown only now:",
        err=True,
    )
    typer.echo(token)


@tokens.command("list")
def tokens_list(
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked tokens.")] = False,
) -> None:
    """id, name, role, prefix, created, last used (to the minute), revoked. Never the token."""
    from app.database import make_engine

    engine = make_engine(get_settings())
    try:
        with engine.connect() as conn:
            found = list_tokens(conn, include_revoked=revoked)
    finally:
        engine.dispose()
    for t in found:
        used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never used"
        gone = f", revoked {t.revoked_at.isoformat(timespec='seconds')}" if t.revoked_at else ""
        typer.echo(
            f"{t.id}\t{t.name}\t{t.role.value}\t{t.prefix}...\tcreated "
            f"{t.created_at.isoformat(timespec='seconds')} by {t.created_by}\t{used}{gone}"
        )
    if not found:
        typer.echo("no tokens")


@tokens.command("revoke")
def tokens_revoke(
    token: Annotated[str, typer.Argument(help="The token's id or (active) name.")],
) -> None:
    """Revoke a token: refused from its next request on, its dashboard sessions too."""
    from app.database import make_engine

    principal = cli_principal()
    engine = make_engine(get_settings())
    try:
        with engine.begin() as conn:
            info = revoke_token(conn, token)
            record_audit(conn, principal, "token.revoke", f"token:{info.id}", {"name": info.name})
    except TokenError as exc:
        _fail(str(exc))
        return
    finally:
        engine.dispose()
    typer.echo(f"token {info.id} {info.name!r} ({info.role.value}) revoked")
