"""`spectrosynth inspect`: what the model will see of a MIDI file."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import (
    MidiArg,
    MuteOpt,
    NoDrumsOpt,
    ProgramOpt,
    TrackOpt,
    clock,
    friendly_errors,
    read_score,
    remap_from_options,
)


@app.command("inspect")
@friendly_errors
def inspect_command(
    midi: MidiArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (a stable format).")
    ] = False,
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Add each segment's model token ids (without padding).")
    ] = False,
    program: ProgramOpt = None,
    track: TrackOpt = None,
    mute: MuteOpt = None,
    no_drums: NoDrumsOpt = False,
) -> None:
    """Show what the model will see: duration, tracks and the instrument each renders as, segments, tokens.

    Takes the same instrument options as `render`, to check their effect first.

    Example: spectrosynth inspect song.mid --program 0=40 --json | jq '.tracks[] | {track, model_class_name}'
    """
    from spectrosynth.inspection import inspect_score

    remap = remap_from_options(program, track, mute, no_drums)
    report = inspect_score(read_score(midi), include_tokens=tokens, remap=remap)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=max(100, Console().width))
    seconds = report["duration"]
    console.print(f"[bold]{report['file']}[/bold]")
    console.print(
        f"  duration  {clock(seconds)} ({seconds:.2f} s); renders as {report['segments']} segments of "
        f"{report['segment_seconds']} s"
    )
    console.print(f"  notes     {report['notes']} in {len(report['tracks'])} tracks")
    console.print(
        f"  tokens    longest segment {report['longest_segment_tokens']} of {report['max_segment_tokens']}"
    )
    for notice in report.get("notices", []):
        console.print(f"  note: {notice}", soft_wrap=True)
    for o in report["overflowing_segments"]:
        console.print(
            f"  [yellow]warning[/yellow]: segment {o['index']} ({o['start']:.2f}-{o['end']:.2f} s) has "
            f"{o['tokens']} tokens; events from {o['dropped_from']:.2f} s to {o['end']:.2f} s are dropped"
        )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in [("#", "right"), ("track name", "left"), ("ch", "right"), ("program", "left"),
                          ("notes", "right"), ("renders as", "left")]:  # fmt: skip
        table.add_column(name, justify=justify)
    for t in report["tracks"]:
        program = "drums" if t["is_drum"] else f"{t['program']} {t['program_name']}"
        if t.get("source_program") is not None:
            program += f" (was {t['source_program']})"
        renders = "Drums" if t["is_drum"] else f"{t['model_class_name']} ({t['model_class']})"
        if t.get("muted"):
            renders = "muted"
        channel = "?" if t["channel"] is None else str(t["channel"])
        table.add_row(str(t["track"]), t["name"] or "-", channel, program, str(t["notes"]), renders)
    if report["tracks"]:
        console.print(table)
    for i, seg in enumerate(report.get("tokens", [])):
        console.print(f"segment {i} ({len(seg)} tokens): " + " ".join(map(str, seg)), soft_wrap=True)
