"""`spectrosynth doctor`: what this installation is and finds, to paste into a bug report."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import friendly_errors


@app.command("doctor")
@friendly_errors
def doctor_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (a stable format).")
    ] = False,
    remeasure: Annotated[
        bool,
        typer.Option(
            "--remeasure",
            help="Measure again whether bfloat16 is faster than float32 on this CPU (under a second) and"
            " keep the new decision for --dtype auto.",
        ),
    ] = False,
) -> None:
    """Show spectrosynth's installation for a bug report: Python, OS, the torch build and its devices, the
    CPU's matrix features, what --dtype auto picks and how it was decided, onnxruntime's providers, package
    versions, whether the published model is in the Hugging Face cache, the converted-weights cache and the
    variables that matter.

    Never downloads anything. A check that fails shows its error in its line; the rest are still shown.

    Example: spectrosynth doctor --json > doctor.json
    """
    from spectrosynth import doctor

    report = doctor.collect(remeasure=remeasure)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(doctor.format_report(report), nl=False)
