"""``openperps reindex``: rebuild the read models from the whole event log."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from openperps.core.errors import OpenPerpsError
from openperps.indexer.models import save_state
from openperps.runtime.snapshots import pack
from openperps.runtime.startup import load_engine, load_read_models
from openperps.store import StoreError, open_log

err = Console(stderr=True, soft_wrap=True)


def reindex(
    db: Annotated[
        str | None,
        typer.Option(envvar="OPENPERPS_DB", help="event log: sqlite:///path or postgresql://"),
    ] = None,
) -> None:
    """Rebuild the read models from the event log and store them with a fresh snapshot."""
    if db is None:
        default = Path("data") / "events.sqlite3"
        if not default.exists():
            err.print(f"[red]error[/red]: no event log at {escape(str(default))} (give --db)")
            raise typer.Exit(1)
        db = str(default)
    local = db.removeprefix("sqlite:///") if "://" not in db or db.startswith("sqlite:") else None
    if local is not None and not Path(local).exists():
        err.print(f"[red]error[/red]: no event log at {escape(str(local))}")
        raise typer.Exit(1)
    try:
        version = asyncio.run(_reindex(db))
    except (StoreError, OpenPerpsError) as exc:
        err.print(f"[red]error[/red]: {escape(str(exc))}")
        raise typer.Exit(1) from None
    err.print(f"read models rebuilt at version {version}")


async def _reindex(db: str) -> int:
    log = await open_log(db)
    try:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err) as progress:
            engine_task = progress.add_task("engine", total=None)
            engine = await load_engine(
                log,
                progress=lambda done, total: progress.update(
                    engine_task, completed=done, total=total
                ),
            )
            models_task = progress.add_task("read models", total=None)
            models = await load_read_models(
                log,
                from_scratch=True,
                progress=lambda done, total: progress.update(
                    models_task, completed=done, total=total
                ),
            )
        if engine.version:
            engine_blob = engine.snapshot_bytes()
            blob = pack(engine_blob, msgspec.json.encode(save_state(models)))
            await log.save_snapshot(engine.version, hashlib.sha256(engine_blob).hexdigest(), blob)
        return models.version
    finally:
        await log.close()
