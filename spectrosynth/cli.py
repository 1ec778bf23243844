"""The `spectrosynth` command line. Thin by design: the work happens in the library modules.

Heavy modules (torch, numpy, pretty_midi) are imported inside the commands so that `--help` is instant.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

DEBUG_ENV = "SPECTROSYNTH_DEBUG"  # set to 1 to see full tracebacks

app = typer.Typer(
    name="spectrosynth",
    help="Render MIDI files to audio with the Spectrogram Diffusion model (Hawthorne et al., ISMIR 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MidiArg = Annotated[
    str, typer.Argument(help="MIDI file to read; '-' reads it from standard input.", metavar="SONG.mid")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"spectrosynth: error: {message}", err=True)
    return typer.Exit(code)


def friendly_errors(command):
    """Turn any failure into one line on stderr and exit code 1; SPECTROSYNTH_DEBUG=1 shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from spectrosynth.errors import SpectrosynthError

        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                raise
            if isinstance(e, SpectrosynthError):
                raise _fail(str(e)) from None
            raise _fail(f"{type(e).__name__}: {e} (set {DEBUG_ENV}=1 to see the traceback)") from None

    return wrapper


def _read_score(source: str):
    from spectrosynth.midi import read_midi

    if source == "-":
        return read_midi(sys.stdin.buffer.read(), name="<stdin>")
    return read_midi(Path(source))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"spectrosynth {version('spectrosynth')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Render MIDI files to audio with the Spectrogram Diffusion model (Hawthorne et al., ISMIR 2022).

    Run `spectrosynth COMMAND --help` for a command's options. Set SPECTROSYNTH_DEBUG=1 to see tracebacks.
    """


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
) -> None:
    """Show what the model will see: duration, tracks and the instrument each renders as, segments, tokens.

    Example: spectrosynth inspect song.mid --json | jq '.tracks[] | {track, model_class_name}'
    """
    from spectrosynth.inspection import inspect_score

    report = inspect_score(_read_score(midi), include_tokens=tokens)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)


@app.command("render")
@friendly_errors
def render_command(
    midi: MidiArg,
    output: Annotated[Path, typer.Argument(help="Audio file to write (.wav).", metavar="OUT.wav")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Hub repo id or local folder in the published layout.")
    ] = "google/music-spectrogram-diffusion",
    revision: Annotated[
        str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit) to use.")
    ] = None,
    device: Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[
        str, typer.Option("--dtype", help="float32, bfloat16, float16 (CUDA) or auto.")
    ] = "float32",
    steps: Annotated[
        int, typer.Option("--steps", min=1, max=1000, help="Diffusion steps per segment.")
    ] = 100,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Random seed: the same seed gives the same audio.")
    ] = 0,
    mel_out: Annotated[
        Path | None,
        typer.Option("--mel-out", help="Also save the log-mel spectrogram (float32, frames x 128, .npy)."),
    ] = None,
) -> None:
    """Render a MIDI file to 16 kHz audio.

    Example: spectrosynth render song.mid song.wav --steps 100 --seed 1
    """
    import numpy as np
    import soundfile as sf

    from spectrosynth.pipeline import Synthesizer
    from spectrosynth.tokens import tokenize

    score = _read_score(midi)
    segments = tokenize(score)
    synth = Synthesizer.from_pretrained(model, revision=revision, device=device, dtype=dtype)
    mel = synth.generate_mel([s.tokens for s in segments], steps=steps, seed=seed)
    audio = synth.vocoder(mel)
    sf.write(output, audio, 16000, subtype="PCM_16")
    if mel_out is not None:
        np.save(mel_out, mel.astype(np.float32))


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=max(100, Console().width))
    seconds = report["duration"]
    console.print(f"[bold]{report['file']}[/bold]")
    console.print(
        f"  duration  {_clock(seconds)} ({seconds:.2f} s); renders as {report['segments']} segments of "
        f"{report['segment_seconds']} s"
    )
    console.print(f"  notes     {report['notes']} in {len(report['tracks'])} tracks")
    console.print(
        f"  tokens    longest segment {report['longest_segment_tokens']} of {report['max_segment_tokens']}"
    )
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
        renders = "Drums" if t["is_drum"] else f"{t['model_class_name']} ({t['model_class']})"
        channel = "?" if t["channel"] is None else str(t["channel"])
        table.add_row(str(t["track"]), t["name"] or "-", channel, program, str(t["notes"]), renders)
    if report["tracks"]:
        console.print(table)
    for i, seg in enumerate(report.get("tokens", [])):
        console.print(f"segment {i} ({len(seg)} tokens): " + " ".join(map(str, seg)), soft_wrap=True)


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
