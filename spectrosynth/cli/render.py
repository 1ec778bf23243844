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
    CacheSizeOpt,
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
    NoCacheOpt,
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
    segment_cache,
)
from spectrosynth.constants import DEFAULT_CACHE_SIZE, DEFAULT_GUIDANCE


def _report_written(summary, label: str, wall: float, quiet: bool, stems=None, use=None) -> None:
    if summary.notice:
        note(f"{label}: {summary.notice}", quiet)
    where = "standard output" if summary.path in (None, "-") else summary.path
    speed = summary.duration / wall if wall else 0.0
    what = f"{summary.duration:.1f} s at {summary.sample_rate} Hz, {summary.subtype}"
    if summary.channels == 2:
        what += ", stereo"
    if summary.loudness is not None:
        what += f", {summary.loudness:.1f} LUFS"
    if use is not None and use.hits:
        what += f", {use.summary()}"
    note(f"wrote {where}: {what} in {wall:.1f} s ({speed:.2f}x real time)", quiet)
    if stems:
        folder = Path(stems[0].path).parent
        note(f"wrote {len(stems)} stems to {folder}: " + ", ".join(Path(s.path).name for s in stems), quiet)
        for stem in stems:
            if stem.notice:
                note(f"{Path(stem.path).name}: {stem.notice}", quiet)


@dataclass
class Rendered:
    """What `_render_parts` did: the files written, which segments came from the cache, the wall time."""

    summary: object  # stems.PartsSummary
    use: object | None  # segment_cache.CacheUse, None without a cache
    wall: float


def _render_parts(
    parts, output: str, settings, loader: ModelLoader, *, sampling: Sampling, seed: int, force: bool,
    quiet: bool, label: str, stems_dir: Path | None, mel_out: Path | None = None, play: Play | None = None,
    cache=None, hold: contextlib.ExitStack | None = None,
) -> Rendered:  # fmt: skip
    """Render a song's parts, each sampled alone (the whole song, for a plain mono render; its tracks, and
    the whole song for a mono mix, with stems or stereo): the mix to `output` ('-' for stdout) and, with
    `stems_dir`, each track's stem, writing progressively and atomically. cache: a SegmentCache to take
    unchanged segments from and keep new ones in. With `play`, the mix also goes to the sound card as it is
    made (spectrosynth.playback), and this returns once it has played; or, given `hold` (--watch), once
    the file is written, leaving the player in `hold`, which the caller closes to stop the sound."""
    from spectrosynth.progress import RenderProgress
    from spectrosynth.segment_cache import CacheUse
    from spectrosynth.stems import PartsOutput, sample_parts

    synth = loader.get()
    began = time.monotonic()
    mel_path = None if mel_out is None else str(mel_out)
    segments = len(parts.song.segments)
    use = CacheUse() if cache is not None else None
    work = sampling.steps * len(parts.parts)  # per segment: each part is sampled alone

    def announce(line: str) -> None:  # playback started
        note(f"{label}: {line}", quiet)

    with contextlib.ExitStack() as stack:
        out = PartsOutput(parts, synth.vocoder, output, settings, force, stems_dir, mel_path)
        stack.enter_context(out)
        player = _player(play, parts, settings, out, announce)
        if player is not None:
            (hold if hold is not None else stack).enter_context(player)
        with RenderProgress(label, segments, work, quiet=quiet, playback=player) as progress:
            report = progress if player is None else player.watch(progress)
            for mels in sample_parts(synth, parts, sampling.steps, seed, report, cache=cache, use=use,
                                     **sampling.options()):  # fmt: skip
                out.add(mels)
            summary = out.finish()
            if player is not None:  # the file is published: say so, and keep the display up while it plays
                if play.keep_output:
                    _report_written(summary.mix, label, time.monotonic() - began, quiet, summary.stems, use)
                player.end()
                if hold is None:
                    player.wait()
    _note_cache_problem(cache, quiet)
    wall = time.monotonic() - began
    if player is not None:
        if hold is None:
            note(f"{label}: {player.summary()}", quiet)
        return Rendered(summary, use, wall)
    _report_written(summary.mix, label, wall, quiet, summary.stems, use)
    return Rendered(summary, use, wall)


def _note_cache_problem(cache, quiet: bool) -> None:
    """Once per process: the segment cache could not be written (the render went on without it)."""
    if cache is not None and cache.problem is not None and not cache.noted:
        cache.noted = True
        note(f"segment cache: {cache.problem}; rendering without keeping segments", quiet)


@dataclass(frozen=True)
class Play:
    """`render --play` and `spectrosynth play`: the output device, checked, and whether OUT is kept."""

    device: object  # playback.OutputDevice
    keep_output: bool = True


def _player(play: Play | None, parts, settings, out, announce):
    """A playback.Player fed by the mix's writer, or None (`render` without --play)."""
    if play is None:
        return None
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
    cache_size: CacheSizeOpt = DEFAULT_CACHE_SIZE,
    no_cache: NoCacheOpt = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Stay running and render again each time SONG.mid is saved (only what changed is sampled "
            "again); with --play, play each new version. Ctrl-C stops.",
        ),
    ] = False,
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

      spectrosynth render song.mid song.wav --watch --play

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
    cache = segment_cache(cache_size, no_cache)
    if mel_out is not None and channels == 2:
        raise typer.BadParameter("a stereo mix of tracks has no single spectrogram; use --channels 1",
                                 param_hint="'--mel-out'")  # fmt: skip
    if watch and midi == "-":
        raise typer.BadParameter("it renders SONG.mid again when the file is saved; give a file, not -",
                                 param_hint="'--watch'")  # fmt: skip
    if watch and output == "-":
        raise typer.BadParameter("it writes OUT again at every save; give a file, not -",
                                 param_hint="'--watch'")  # fmt: skip
    if output is not None:  # None: `spectrosynth play` without OUT
        check_output(output, force)  # before any slow work
    if mel_out is not None:
        check_output(str(mel_out), force)
    playing = _check_play(play, output_device, output, settings)
    remap = remap_from_options(program, track, mute, no_drums)
    loader = ModelLoader(model, revision, device, dtype, quiet, vocoder=vocoder.value)
    from spectrosynth.stems import check_stem_outputs, plan_parts

    label = "<stdin>" if midi == "-" else Path(midi).name
    score = read_score(midi)
    data = None
    if watch:  # the bytes rendered, to tell the next save from this version; parsed again from them
        from spectrosynth.midi import read_midi

        data = Path(midi).read_bytes()
        score = read_midi(data, name=midi)

    def plan(score):
        return plan_parts(score, remap, start, duration, settings, label, stems=stems is not None)

    parts = plan(score)
    if stems is not None:
        check_stem_outputs(parts, stems, settings.fmt, force)
    for notice in parts.notices:
        note(notice, quiet)
    with contextlib.ExitStack() as scratch:
        if output is None:  # only played: the mix is written to a scratch folder, removed at the end
            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="spectrosynth-play-"))
            output = str(Path(folder) / f"mix.{settings.fmt}")

        def render(parts, force: bool, hold=None) -> Rendered:
            return _render_parts(
                parts, output, settings, loader, sampling=sampling, seed=seed, force=force, quiet=quiet,
                label=label, stems_dir=stems, mel_out=mel_out, play=playing, cache=cache, hold=hold,
            )  # fmt: skip

        if not watch:
            render(parts, force)
            return
        _watch(Path(midi), label, data, score, parts, plan, render, force, quiet, stems, settings.fmt)


def _watch(path: Path, label: str, data: bytes, score, parts, plan, render, force: bool, quiet: bool,
           stems: Path | None, fmt: str) -> None:  # fmt: skip
    """--watch: render, then render again at every new complete version of the file (spectrosynth.watch),
    saying what changed and how long it took, until Ctrl-C. A version that cannot be rendered (its tracks
    no longer fit --mute, say) is one error line, and the watch goes on. With --play the previous version
    stops playing when the next one starts rendering."""
    from spectrosynth.errors import SpectrosynthError
    from spectrosynth.stems import stem_paths
    from spectrosynth.watch import versions

    with contextlib.ExitStack() as hold:
        render(parts, force, hold)
        note(f"watching {path} for changes (Ctrl-C stops)", quiet)
        for version in versions(path, last=data, label=label, note=lambda line: note(line, quiet)):
            hold.close()  # the previous version stops playing
            try:
                fresh = plan(version.score)
            except SpectrosynthError as e:
                typer.echo(f"spectrosynth: error: {e}", err=True)
                continue
            for notice in fresh.notices:
                if notice not in parts.notices:
                    note(notice, quiet)
            changes = describe_changes(score, version.score, parts.song, fresh.song)
            try:
                done = render(fresh, True, hold)
            except SpectrosynthError as e:
                hold.close()
                typer.echo(f"spectrosynth: error: {e}", err=True)
                continue
            if stems is not None:  # stems of tracks that no longer play
                for gone in set(stem_paths(parts, stems, fmt)) - set(stem_paths(fresh, stems, fmt)):
                    gone.unlink(missing_ok=True)
            cached = f" ({done.use.summary()})" if done.use is not None else ""
            note(f"{label}: {changes}; re-rendered in {done.wall:.1f} s{cached}", quiet)
            score, parts = version.score, fresh


def describe_changes(old_score, new_score, old_song, new_song) -> str:
    """What an edit changed, for --watch: `segments 12-14 of 35 changed (track 3)`, the segments (1-based)
    whose tokens differ and the tracks whose notes, pedal, program or channel controllers differ."""
    old, new = [s.tokens for s in old_song.segments], [s.tokens for s in new_song.segments]
    changed = [k for k in range(len(new)) if k >= len(old) or old[k] != new[k]]
    tracks = _changed_tracks(old_score, new_score)
    which = ""
    if tracks:
        which = f" (track{'s' if len(tracks) > 1 else ''} {', '.join(map(str, tracks))})"
    if not changed:
        fewer = f"{len(old) - len(new)} segments fewer"
        return ("no segment's notes changed" if len(new) == len(old) else fewer) + which
    word = "segment" if len(changed) == 1 else "segments"
    return f"{word} {_ranges(changed)} of {len(new)} changed{which}"


def _ranges(indices: list[int]) -> str:
    """0-based [11, 12, 13, 20] -> '12-14, 21'."""
    spans: list[list[int]] = []
    for k in indices:
        if spans and k == spans[-1][1] + 1:
            spans[-1][1] = k
        else:
            spans.append([k, k])
    return ", ".join(f"{a + 1}" if a == b else f"{a + 1}-{b + 1}" for a, b in spans)


def _changed_tracks(old, new) -> list[int]:
    """Track numbers (1-based) whose notes, sustain pedal, program, or channel's controllers differ, and
    tracks added or removed."""

    def signature(score, index: int):
        track = score.tracks[index]
        notes = [(n.pitch, n.velocity, n.start, n.end, n.program) for n in score.notes if n.track == index]
        pedals = [(p.time, p.value) for p in score.pedals if p.track == index]
        controls = [(c.time, c.number, c.value) for c in score.controls if c.channel == track.channel]
        return track.program, track.is_drum, track.channel, notes, pedals, controls

    common = min(len(old.tracks), len(new.tracks))
    differ = [i + 1 for i in range(common) if signature(old, i) != signature(new, i)]
    return differ + list(range(common + 1, max(len(old.tracks), len(new.tracks)) + 1))
