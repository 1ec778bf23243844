"""`spectrosynth play`: hear a MIDI file as it renders, and optionally keep the file.

The same command as `render --play`, with OUT optional: it takes render's options, declared once in
render.py (its signature is render's, with SONG.mid and OUT optional, --play left out and --list-devices
added) and runs render's own code, so `play SONG OUT` writes exactly the file `render SONG OUT` writes.
"""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from spectrosynth.cli import render
from spectrosynth.cli.app import app
from spectrosynth.cli.common import UsageError, friendly_errors

_SONG = Annotated[
    str | None,
    typer.Argument(help="MIDI file to play; '-' reads it from standard input.", metavar="SONG.mid",
                   show_default=False),
]  # fmt: skip
_OUT = Annotated[
    str | None,
    typer.Argument(
        help="Also write the audio to this file (.wav or .flac; '-': standard output), exactly as `render` "
        "would.",
        metavar="OUT",
        show_default=False,
    ),
]
_LIST_DEVICES = Annotated[
    bool,
    typer.Option("--list-devices", help="List the audio output devices (for --output-device) and exit."),
]


def _list_devices() -> None:
    """The outputs PortAudio sees, one a line on standard output: index, name, host API, channels, rate."""
    from spectrosynth.errors import PlaybackError
    from spectrosynth.playback import output_devices, portaudio_version

    devices = output_devices()
    if not devices:
        raise PlaybackError(
            "no audio output device found: PortAudio lists none (no sound card, or no sound server such as "
            "PulseAudio or PipeWire running)"
        )
    typer.echo(f"audio outputs ({portaudio_version()}):")
    for device in devices:
        typer.echo(device.describe())


@friendly_errors
def play_command(song: str | None = None, output: str | None = None, list_devices: bool = False, **options):
    """Play a MIDI file as it renders (PortAudio), starting as soon as the rest cannot run dry; with OUT,
    also write it, exactly as `render SONG.mid OUT` does. Takes every render option.

    Examples:

      spectrosynth play song.mid

      spectrosynth play song.mid take.wav --seed 7 --start 30 --duration 20

      spectrosynth play song.mid --channels 2 --output-device 'USB Audio'

      spectrosynth play song.mid --watch

      spectrosynth play --list-devices
    """
    if list_devices:
        return _list_devices()
    if song is None:
        raise UsageError("Missing argument 'SONG.mid'.")
    return render.render_command(song, output, play=True, **options)


def _signature() -> inspect.Signature:
    """render's parameters, SONG.mid and OUT optional, without --play, with --list-devices."""
    params = []
    for param in inspect.signature(render.render_command, eval_str=True).parameters.values():
        if param.name == "midi":
            param = param.replace(name="song", annotation=_SONG, default=None)
        elif param.name == "output":
            param = param.replace(annotation=_OUT, default=None)
        elif param.name == "play":
            continue
        params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    params.append(inspect.Parameter("list_devices", inspect.Parameter.KEYWORD_ONLY, default=False,
                                    annotation=_LIST_DEVICES))  # fmt: skip
    return inspect.Signature(params)


play_command.__signature__ = _signature()
play_command.__annotations__ = {}  # the annotations are in the signature
app.command("play")(play_command)
