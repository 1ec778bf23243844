"""`spectrosynth render`: one MIDI file to audio."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import (
    DEFAULT_MODEL,
    DEFAULT_SAMPLER_NAME,
    DEFAULT_VOCODER_NAME,
    BitDepthOpt,
    ChannelsOpt,
    ClipOpt,
    DeviceOpt,
    DtypeOpt,
    DurationOpt,
    ForceOpt,
    FormatOpt,
    GainOpt,
    GuidanceIntervalOpt,
    GuidanceOpt,
    LoudnessOpt,
    MidiArg,
    ModelLoader,
    ModelOpt,
    MuteOpt,
    NoDrumsOpt,
    NormalizeOpt,
    ProgramOpt,
    QuietOpt,
    RevisionOpt,
    SampleRateOpt,
    SamplerOpt,
    Sampling,
    SeedOpt,
    StartOpt,
    StepsOpt,
    TailOpt,
    TrackOpt,
    TrimOpt,
    VocoderOpt,
    friendly_errors,
    note,
    output_settings,
    read_score,
    remap_from_options,
)
from spectrosynth.constants import DEFAULT_GUIDANCE


def _report_written(summary, label: str, wall: float, quiet: bool, stems=None) -> None:
    if summary.notice:
        note(f"{label}: {summary.notice}", quiet)
    where = "standard output" if summary.path in (None, "-") else summary.path
    speed = summary.duration / wall if wall else 0.0
    what = f"{summary.duration:.1f} s at {summary.sample_rate} Hz, {summary.subtype}"
    if summary.channels == 2:
        what += ", stereo"
    if summary.loudness is not None:
        what += f", {summary.loudness:.1f} LUFS"
    note(f"wrote {where}: {what} in {wall:.1f} s ({speed:.2f}x real time)", quiet)
    if stems:
        folder = Path(stems[0].path).parent
        note(f"wrote {len(stems)} stems to {folder}: " + ", ".join(Path(s.path).name for s in stems), quiet)
        for stem in stems:
            if stem.notice:
                note(f"{Path(stem.path).name}: {stem.notice}", quiet)


def _render_parts(
    parts, output: str, settings, loader: ModelLoader, *, sampling: Sampling, seed: int, force: bool,
    quiet: bool, label: str, stems_dir: Path | None, mel_out: Path | None = None, play: Play | None = None,
) -> None:  # fmt: skip
    """Render a song's parts as rows of one batch (the whole song alone, for a plain mono render; its tracks,
    and the whole song for a mono mix, with stems or stereo): the mix to `output` ('-' for stdout) and, with
    `stems_dir`, each track's stem, writing progressively and atomically. With `play`, the mix also goes to
    the sound card as it is made (spectrosynth.playback), and this returns once it has played."""
    from spectrosynth.progress import RenderProgress
    from spectrosynth.stems import PartsOutput, sample_parts

    synth = loader.get()
    began = time.monotonic()
    mel_path = None if mel_out is None else str(mel_out)
    segments = len(parts.song.segments)

    def announce(line: str) -> None:  # playback started
        note(f"{label}: {line}", quiet)

    with (
        PartsOutput(parts, synth.vocoder, output, settings, force, stems_dir, mel_path) as out,
        _player(play, parts, settings, out, announce) as player,
    ):
        with RenderProgress(label, segments, sampling.steps, quiet=quiet, playback=player) as progress:
            report = progress if player is None else player.watch(progress)
            for mels in sample_parts(synth, parts, sampling.steps, seed, report, **sampling.options()):
                out.add(mels)
            summary = out.finish()
            if player is not None:  # the file is published: say so, and keep the display up while it plays
                if play.keep_output:
                    _report_written(summary.mix, label, time.monotonic() - began, quiet, summary.stems)
                player.end()
                player.wait()
    if player is not None:
        note(f"{label}: {player.summary()}", quiet)
        return
    wall = time.monotonic() - began
    _report_written(summary.mix, label, wall, quiet, summary.stems)


@dataclass(frozen=True)
class Play:
    """`render --play` and `spectrosynth play`: the output device, checked, and whether OUT is kept."""

    device: object  # playback.OutputDevice
    keep_output: bool = True


def _player(play: Play | None, parts, settings, out, announce):
    """A playback.Player fed by the mix's writer, or nothing (`render` without --play)."""
    if play is None:
        return contextlib.nullcontext()
    from spectrosynth.constants import SAMPLE_RATE, SEGMENT_SECONDS
    from spectrosynth.playback import Player

    total = settings.samples(parts.song) / SAMPLE_RATE
    player = Player(play.device, settings.sample_rate or SAMPLE_RATE, settings.channels, total,
                    len(parts.song.segments) * SEGMENT_SECONDS, announce=announce)  # fmt: skip
    out.mix.monitor = player.feed
    return player


def _check_play(play: bool, output_device: str | None, output: str | None, settings) -> Play | None:
    """--play and --output-device checked before any slow work: PortAudio, the device and its settings."""
    if not play:
        if output_device is not None:
            raise typer.BadParameter("it says where --play plays; add --play", param_hint="'--output-device'")
        return None
    from spectrosynth.constants import SAMPLE_RATE
    from spectrosynth.playback import check_device, pick_output_device

    device = pick_output_device(output_device)
    check_device(device, settings.sample_rate or SAMPLE_RATE, settings.channels)
    return Play(device, keep_output=output is not None)


@app.command("render")
@friendly_errors
def render_command(
    midi: MidiArg,
    output: Annotated[
        str,
        typer.Argument(
            help="Audio file to write (.wav or .flac); '-' writes to standard output.", metavar="OUT"
        ),
    ],
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    sampler: SamplerOpt = DEFAULT_SAMPLER_NAME,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = DEFAULT_GUIDANCE,
    guidance_interval: GuidanceIntervalOpt = "full",
    seed: SeedOpt = 0,
    program: ProgramOpt = None,
    track: TrackOpt = None,
    mute: MuteOpt = None,
    no_drums: NoDrumsOpt = False,
    start: StartOpt = 0.0,
    duration: DurationOpt = None,
    fmt: FormatOpt = None,
    bit_depth: BitDepthOpt = 16,
    sample_rate: SampleRateOpt = None,
    gain: GainOpt = 0.0,
    normalize: NormalizeOpt = False,
    clip: ClipOpt = "rescale",
    tail: TailOpt = 1.0,
    trim: TrimOpt = True,
    channels: ChannelsOpt = 1,
    loudness: LoudnessOpt = None,
    stems: Annotated[
        Path | None,
        typer.Option(
            "--stems",
            metavar="DIR",
            help="Also write each track alone into DIR (03-strings-violin.wav, ...), rendered with the same "
            "seed and options, at the mix's level; mono, or placed in stereo with --channels 2.",
        ),
    ] = None,
    mel_out: Annotated[
        Path | None,
        typer.Option(
            "--mel-out",
            metavar="MEL.npy",
            help="Also save the log-mel spectrogram (float32, frames x 128) as .npy.",
        ),
    ] = None,
    vocoder: VocoderOpt = DEFAULT_VOCODER_NAME,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    play: Annotated[
        bool,
        typer.Option(
            "--play",
            help="Also play the audio on the sound card as it renders, starting as soon as the rest cannot "
            "run dry (PortAudio; `spectrosynth play` is the same without a file).",
        ),
    ] = False,
    output_device: Annotated[
        str | None,
        typer.Option(
            "--output-device",
            metavar="NAME|INDEX",
            help="Where --play plays: a device's index or (part of) its name, as `spectrosynth play "
            "--list-devices` lists them. Default: the system's default output.",
        ),
    ] = None,
) -> None:
    """Render a MIDI file to audio (16 kHz mono unless --sample-rate or --channels 2).

    Examples:

      spectrosynth render song.mid song.wav

      spectrosynth render song.mid mix.wav --channels 2 --stems stems/ --loudness -14

      spectrosynth render song.mid take.wav --start 30 --duration 20 --play

      spectrosynth render song.mid song.flac --program 0=violin --mute 3 --start 30 --duration 20

      spectrosynth render song.mid song.wav --sampler ddpm --steps 1000 --guidance 2

      cat song.mid | spectrosynth render - - --format flac > song.flac
    """
    from dataclasses import replace

    from spectrosynth.audio import check_output, output_format

    settings = output_settings(fmt, bit_depth, sample_rate, gain, normalize, clip, tail, trim, channels,
                               loudness)  # fmt: skip
    settings = replace(settings, fmt=output_format(output, fmt) if output is not None else fmt or "wav")
    sampling = Sampling.from_options(sampler, steps, guidance, guidance_interval)
    if mel_out is not None and channels == 2:
        raise typer.BadParameter("a stereo mix of tracks has no single spectrogram; use --channels 1",
                                 param_hint="'--mel-out'")  # fmt: skip
    if output is not None:  # None: `spectrosynth play` without OUT
        check_output(output, force)  # before any slow work
    if mel_out is not None:
        check_output(str(mel_out), force)
    playing = _check_play(play, output_device, output, settings)
    remap = remap_from_options(program, track, mute, no_drums)
    loader = ModelLoader(model, revision, device, dtype, quiet, vocoder=vocoder.value)
    from spectrosynth.stems import check_stem_outputs, plan_parts

    label = "<stdin>" if midi == "-" else Path(midi).name
    parts = plan_parts(read_score(midi), remap, start, duration, settings, label, stems=stems is not None)
    if stems is not None:
        check_stem_outputs(parts, stems, settings.fmt, force)
    for notice in parts.notices:
        note(notice, quiet)
    with contextlib.ExitStack() as scratch:
        if output is None:  # only played: the mix is written to a scratch folder, removed at the end
            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="spectrosynth-play-"))
            output = str(Path(folder) / f"mix.{settings.fmt}")
        _render_parts(
            parts, output, settings, loader, sampling=sampling, seed=seed, force=force, quiet=quiet,
            label=label, stems_dir=stems, mel_out=mel_out, play=playing,
        )  # fmt: skip
