"""`spectrosynth evaluate`: note F1, seam score and mel L1 of renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import MuteOpt, QuietOpt, fail, friendly_errors, remap_from_options


@app.command("evaluate")
@friendly_errors
def evaluate_command(
    midi: Annotated[
        Path,
        typer.Argument(help="Folder searched (recursively) for .mid and .midi files, or one MIDI file.",
                       metavar="MIDI_DIR"),
    ],
    audio: Annotated[
        Path,
        typer.Argument(help="Folder with each one's render at the same place and name (.wav, .flac, .ogg, "
                       ".mp3), as `batch` writes it; or one audio file.", metavar="AUDIO_DIR"),
    ],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", metavar="REF_DIR", help="Folder (or file) of reference audio laid out "
                     "as AUDIO_DIR, such as recordings of the same MIDI files: adds mel_l1, the distance to "
                     "it."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the scores as JSON (a stable format).")
    ] = False,
    mute: MuteOpt = None,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    """Measure renders: note F1 against the MIDI (by transcription), seam score, mel L1 to a reference.

    note_f1: onset-only note F1 of the audio's transcription against the MIDI file's notes (50 ms, 50
    cents, drums left out); seam: the spectral change across 5.12 s segment boundaries over the change
    elsewhere, 1.0 = no seam; mel_l1: mean absolute log-mel difference to the reference. docs/quality.md
    has the definitions. A file that cannot be scored is reported in one line and the others are still
    scored; the exit code is 1 if any file failed. Needs pip install "spectrosynth[evaluate]" && pip install
    --no-deps basic-pitch==0.4.0.

    Examples:

      spectrosynth evaluate midi/ audio/

      spectrosynth evaluate midi/ audio/ --reference recordings/ --json | jq .mean

      spectrosynth evaluate song.mid song.wav
    """
    from spectrosynth.evaluation import evaluate_dirs
    from spectrosynth.evaluation.report import EvaluateProgressDisplay, print_table

    remap = remap_from_options(None, None, mute, False)
    with EvaluateProgressDisplay(quiet) as progress:
        report = evaluate_dirs(midi, audio, reference, remap=remap, progress=progress)
    if as_json:
        typer.echo(json.dumps({"files": report["files"], "mean": report["mean"]}, indent=2))
    else:
        print_table(report, reference is not None, midi if midi.is_dir() else None)
    if report["failed"]:
        raise fail(f"{len(report['failed'])} of {len(report['failed']) + len(report['files'])} files could "
                    "not be scored (listed above)")  # fmt: skip
