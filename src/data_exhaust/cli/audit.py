"""``exhaust audit``: who downloaded which file (reads the database directly)."""

from __future__ import annotations

import typer

from data_exhaust.cli.admin import services
from data_exhaust.cli.tables import print_table


def audit(
    request_id: str = typer.Option(None, "--request-id", help="Only this request's files."),
    limit: int = typer.Option(50, min=1, max=10_000, help="Most recent N downloads."),
) -> None:
    """List downloads of result files: when, which request and file, which key, from where."""
    _, found = services().audit.query(request_id, limit)
    rows = [
        [
            d.downloaded_at.isoformat(timespec="seconds"),
            d.request_id or "",
            d.blob_key.rpartition("/")[2],
            d.key_id or "",
            d.channel or "",
            d.client_address or "",
            str(d.status),
        ]
        for d in found
    ]
    print_table(("when", "requestId", "file", "keyId", "channel", "address", "status"), rows)


def register(app: typer.Typer) -> None:
    app.command()(audit)
