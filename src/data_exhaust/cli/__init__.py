"""The ``exhaust`` command line: run the service, administer it, and talk to it as a client.

Every command starts a new process, so the modules here import only typer, rich and
:mod:`data_exhaust.constants` at module level; each command imports what it needs (the
database, the services, the sync engine, httpx) when it runs. ``exhaust --help`` stays fast.
"""

from __future__ import annotations

import typer

from data_exhaust import __version__
from data_exhaust.cli import admin, audit, registry, remote, sync

app = typer.Typer(
    name="exhaust",
    help="Data Exhaust: turn chatbot telemetry into CSV files, on demand and safely.\n\n"
    "Settings come from EXHAUST_* environment variables or a .env file "
    "(see docs/reference/settings.md). Start with `exhaust serve --first-run`.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
admin.register(app)
audit.register(app)
remote.register(app)
registry.register(app)
sync.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit


@app.callback()
def _main(
    log_level: str = typer.Option("INFO", envvar="EXHAUST_LOG_LEVEL", help="DEBUG, INFO, WARNING"),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    from data_exhaust.logs import configure  # structlog: not needed for --help

    configure(log_level.upper())


def main() -> None:
    app()
