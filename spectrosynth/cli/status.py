"""`spectrosynth status`: what a batch has done so far, from its manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import clock_hms, friendly_errors


@app.command("status")
@friendly_errors
def status_command(
    out_dir: Annotated[Path, typer.Argument(help="A batch's output folder.", metavar="OUT_DIR")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    errors: Annotated[
        int, typer.Option("--errors", metavar="N", min=0, help="Show the N most frequent errors.")
    ] = 10,
) -> None:
    """What a batch has done so far, from its manifest: files rendered, failed (and why), audio hours and
    throughput, across every shard, worker and run that wrote into OUT_DIR.

    Example: spectrosynth status audio/ --json | jq .audio_hours
    """
    from spectrosynth.batch import read_status
    from spectrosynth.errors import SpectrosynthError

    if not (out_dir / ".spectrosynth").is_dir():
        raise SpectrosynthError(
            f"{out_dir}: no batch manifest here; give the OUT_DIR of a spectrosynth batch"
        )
    status = read_status(out_dir, top=errors)
    if as_json:
        typer.echo(json.dumps(status.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=str(out_dir), title_justify="left")
    for column in ("files", "rendered", "failed", "skipped", "audio", "wall time", "x real time", "files/h",
                   "workers"):  # fmt: skip
        table.add_column(column, justify="right")
    table.add_row(str(status.files), str(status.ok), str(status.failed), str(status.skipped),
                  clock_hms(status.audio_seconds), clock_hms(status.wall_seconds),
                  f"{status.real_time_factor:.2f}", f"{status.files_per_hour:.1f}",
                  str(status.workers))  # fmt: skip
    console.print(table)
    if status.errors:
        console.print("most frequent errors:")
        for message, count in status.errors:
            console.print(f"  {count:6d}  {message}", soft_wrap=True)
