"""`tramontane tenancy ...`: workspaces, API keys and usage from the command line.

It works on the database directly (`--database-url` or $TRAMONTANE_DATABASE_URL,
else the embedded SQLite file), as the operator of the machine, so it needs no
admin key; its actions are audited with the actor "cli"."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from ..store import ApiKey, Organisation, Workspace
from ..store.types import utcnow
from . import directory, keys, usage
from .audit import CLI
from .capabilities import Capability
from ..errors import Invalid, NotFound, TramontaneError
from .principal import KEY_PREFIX, Limits
from .request_logs import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS
from .service import Tenancy

app = typer.Typer(help="Organisations, workspaces, API keys and usage.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
workspaces_app = typer.Typer(help="Create, list, limit and erase workspaces.", no_args_is_help=True)
organisations_app = typer.Typer(help="Create and list organisations.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(workspaces_app, name="workspaces")
app.add_typer(organisations_app, name="organisations")

console = Console()

DatabaseUrl = Annotated[
    str | None, typer.Option("--database-url", envvar="TRAMONTANE_DATABASE_URL", help="Defaults to the SQLite file.")
]
Rpm = Annotated[int | None, typer.Option("--rpm", min=0, help="Requests per minute.")]
Tpm = Annotated[int | None, typer.Option("--tpm", min=0, help="Tokens per minute.")]
Concurrent = Annotated[int | None, typer.Option("--max-concurrent", min=0, help="Requests in flight.")]
Monthly = Annotated[int | None, typer.Option("--monthly-tokens", min=0, help="Token budget per calendar month.")]
RetentionDays = Annotated[
    int | None,
    typer.Option(
        "--request-log-days",
        min=MIN_RETENTION_DAYS,
        max=MAX_RETENTION_DAYS,
        help="Store request and response bodies, kept this many days (default: not stored).",
    ),
]


@contextmanager
def _open(url: str | None) -> Iterator[Tenancy]:
    tenancy = Tenancy.open(url)
    try:
        yield tenancy
    except TramontaneError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    finally:
        tenancy.close()


@organisations_app.command("list")
def organisations_list(database_url: DatabaseUrl = None) -> None:
    with _open(database_url) as tenancy, tenancy.store.session() as session:
        table = Table("id", "name", "platform", "created")
        for o in session.scalars(select(Organisation).order_by(Organisation.created_at)):
            table.add_row(o.id, o.name, "yes" if o.is_platform else "", o.created_at.isoformat(timespec="seconds"))
    console.print(table)


@organisations_app.command("create")
def organisations_create(name: str, database_url: DatabaseUrl = None) -> None:
    with _open(database_url) as tenancy, tenancy.store.write_session() as session:
        organisation = directory.create_organisation(session, name, CLI)
        console.print(organisation.id)


@workspaces_app.command("list")
def workspaces_list(
    organisation: Annotated[str | None, typer.Option(help="Only this organisation's.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    statement = select(Workspace).order_by(Workspace.created_at)
    if organisation is not None:
        statement = statement.where(Workspace.organisation_id == organisation)
    with _open(database_url) as tenancy, tenancy.store.session() as session:
        table = Table("id", "organisation", "name", "rpm", "tpm", "concurrent", "monthly tokens", "request logs")
        for w in session.scalars(statement):
            limits = [str(v) if v is not None else "-" for v in Limits.of(w).as_dict().values()]
            days = w.request_log_retention_days
            table.add_row(w.id, w.organisation_id, w.name, *limits, f"{days} days" if days else "off")
    console.print(table)


@workspaces_app.command("create")
def workspaces_create(
    name: str,
    organisation: Annotated[str | None, typer.Option(help="Organisation id; default: the platform's.")] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_concurrent: Concurrent = None,
    monthly_tokens: Monthly = None,
    request_log_days: RetentionDays = None,
    database_url: DatabaseUrl = None,
) -> None:
    limits = Limits(rpm, tpm, max_concurrent, monthly_tokens)
    with _open(database_url) as tenancy, tenancy.store.write_session() as session:
        if organisation is None:
            owner = session.scalar(select(Organisation).where(Organisation.is_platform.is_(True)))
            if owner is None:
                raise NotFound("No platform organisation yet: start the server once, or pass --organisation")
        else:
            owner = session.get(Organisation, organisation)
            if owner is None:
                raise NotFound(f"No organisation with id '{organisation}'")
        console.print(directory.create_workspace(session, owner, name, CLI, limits, request_log_days).id)


@workspaces_app.command("request-logs")
def workspaces_request_logs(
    workspace: str,
    retention_days: Annotated[
        int | None,
        typer.Option(min=MIN_RETENTION_DAYS, max=MAX_RETENTION_DAYS, help="Store bodies, kept this many days."),
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop storing bodies (stored ones expire).")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Turns the storage of the workspace's request and response bodies on or off."""
    if off == (retention_days is not None):
        console.print("[red]Pass either --retention-days N or --off.[/red]")
        raise typer.Exit(1)
    with _open(database_url) as tenancy, tenancy.store.write_session() as session:
        row = session.get(Workspace, workspace)
        if row is None:
            raise NotFound(f"No workspace with id '{workspace}'")
        directory.set_request_log_retention(session, row, retention_days, CLI)


@workspaces_app.command("set-limits")
def workspaces_set_limits(
    workspace: str,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_concurrent: Concurrent = None,
    monthly_tokens: Monthly = None,
    clear: Annotated[bool, typer.Option(help="Lift every limit not given.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    given = Limits(rpm, tpm, max_concurrent, monthly_tokens).as_dict()
    changes = given if clear else {k: v for k, v in given.items() if v is not None}
    with _open(database_url) as tenancy, tenancy.store.write_session() as session:
        row = session.get(Workspace, workspace)
        if row is None:
            raise NotFound(f"No workspace with id '{workspace}'")
        directory.update_workspace(session, row, CLI, limits=changes)


@workspaces_app.command("set-weight")
def workspaces_set_weight(
    workspace: str,
    weight: Annotated[
        float | None, typer.Argument(help="Its share of the engines against other workspaces (> 0).")
    ] = None,
    default: Annotated[bool, typer.Option("--default", help="Back to `tramontane up --workspace-weight`, else 1.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Sets a workspace's scheduling weight; running servers apply it to new requests."""
    if (weight is None) == (not default):
        console.print("[red]Give a weight or --default.[/red]")
        raise typer.Exit(2)
    with _open(database_url) as tenancy, tenancy.store.write_session() as session:
        row = session.get(Workspace, workspace)
        if row is None:
            raise NotFound(f"No workspace with id '{workspace}'")
        directory.set_scheduling_weight(session, row, weight, CLI)
    console.print(f"{workspace}: scheduling weight {weight if weight is not None else 'default'}")


@workspaces_app.command("delete")
def workspaces_delete(
    workspace: str,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: erasure cannot be undone.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Erases the workspace: keys, usage, request logs, audit entries and files."""
    if not yes:
        console.print("[red]Erasure cannot be undone; pass --yes to confirm.[/red]")
        raise typer.Exit(1)
    with _open(database_url) as tenancy:
        tenancy.erase_workspace(workspace, CLI)
    console.print(f"erased {workspace}")


@keys_app.command("create")
def keys_create(
    workspace: Annotated[str, typer.Option(help="Workspace id.")],
    name: Annotated[str, typer.Option(help="A label for people.")] = "cli",
    capability: Annotated[list[Capability], typer.Option(help="Repeat for several.")] = [Capability.INFERENCE],  # noqa: B006
    expires_in_days: Annotated[float | None, typer.Option(min=0)] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_concurrent: Concurrent = None,
    monthly_tokens: Monthly = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Creates a key and prints it: the only time it can be seen."""
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days is not None else None
    with _open(database_url) as tenancy, tenancy.store.write_session() as session:
        row = session.get(Workspace, workspace)
        if row is None:
            raise NotFound(f"No workspace with id '{workspace}'")
        created = keys.create_key(
            session,
            tenancy.pepper,
            row,
            name=name,
            capabilities=frozenset(capability),
            actor=CLI,
            expires_at=expires_at,
            limits=Limits(rpm, tpm, max_concurrent, monthly_tokens),
        )
    console.print("[bold]Store this key now; it will not be shown again:[/bold]")
    print(created.plaintext)


@keys_app.command("list")
def keys_list(
    workspace: Annotated[str, typer.Option(help="Workspace id.")],
    database_url: DatabaseUrl = None,
) -> None:
    now = utcnow()
    with _open(database_url) as tenancy, tenancy.store.session() as session:
        table = Table("key", "name", "capabilities", "status", "created", "expires")
        for k in session.scalars(select(ApiKey).where(ApiKey.workspace_id == workspace).order_by(ApiKey.created_at)):
            expires = k.expires_at.isoformat(timespec="seconds") if k.expires_at else "never"
            table.add_row(
                f"{KEY_PREFIX}{k.id}",
                k.name,
                k.capabilities,
                keys.key_status(k, now),
                k.created_at.isoformat(timespec="seconds"),
                expires,
            )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id or its tmt_<id> prefix.")],
    database_url: DatabaseUrl = None,
) -> None:
    key_id = key.removeprefix(KEY_PREFIX).partition("_")[0]
    with _open(database_url) as tenancy, tenancy.store.write_session() as session:
        row = session.get(ApiKey, key_id)
        workspace = session.get(Workspace, row.workspace_id) if row is not None else None
        if row is None or workspace is None:
            raise NotFound(f"No API key with id '{key_id}'")
        keys.revoke_key(session, row, workspace.organisation_id, CLI)
    console.print(f"revoked {KEY_PREFIX}{key_id}")


@app.command("usage")
def usage_command(
    workspace: Annotated[str | None, typer.Option(help="Only this workspace.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key (id).")] = None,
    group_by: Annotated[list[str], typer.Option(help="workspace, key, model, day; repeat.")] = ["day"],  # noqa: B006
    since: Annotated[str | None, typer.Option(help="First UTC day, YYYY-MM-DD.")] = None,
    until: Annotated[str | None, typer.Option(help="Last UTC day, YYYY-MM-DD.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Requests, tokens and energy, totalled per group."""
    with _open(database_url) as tenancy:
        try:
            rows = usage.report(
                tenancy.store,
                group_by=group_by,
                workspace_id=workspace,
                key_id=key.removeprefix(KEY_PREFIX) if key else None,
                since=date.fromisoformat(since) if since else None,
                until=date.fromisoformat(until) if until else None,
            )
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    table = Table(*group_by, "requests", "prompt", "completion", "total", "energy (Wh)")
    for row in rows:
        table.add_row(
            *(str(row[g]) for g in group_by),
            str(row["requests"]),
            str(row["prompt_tokens"]),
            str(row["completion_tokens"]),
            str(row["total_tokens"]),
            f"{row['energy_wh']:.4f}",
        )
    console.print(table)
