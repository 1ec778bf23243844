"""Stems and stereo mixes: each track rendered by the model alone, then written apart and/or placed in a mix.

The model is mono and renders a whole song at once. For a producer spectrosynth can also render each track
by itself (the same seed, sampler and options: exactly what `--mute` of every other track would give) and
either write it as a stem, or place it in a stereo mix by its MIDI channel's pan and level, as a General
MIDI synthesizer does:

* pan (CC10) by the constant-power law of MIDI RP-036: angle = pi/2 * max(0, pan - 1) / 126, left gain
  cos(angle), right gain sin(angle); 64 is the centre (both -3 dB), 0 and 1 are hard left, 127 hard right;
* level by channel volume (CC7) and expression (CC11), each as GM2 recommends: gain = (value / 127)^2,
  i.e. 40 log10(value / 127) dB; CC7 64 is 11.9 dB below 127;
* each value as it stands at the track's first note in the rendered window (controllers sent on the
  track's MIDI channel by any MTrk of the file, the latest at or before that note); a file that sends none
  gets the General MIDI defaults, pan 64, volume 100, expression 127. Later changes (automation curves)
  are followed, sample by sample, with a 5 ms ramp against zipper noise (`spectrosynth.automation`).

The parts of a song (its tracks, and the whole song when the mix is the model's joint mono render) are
sampled segment by segment, each part alone in its own call with its own noise generator seeded alike, so
each gets exactly what it would alone (`spectrosynth batch` stacks them as rows of one batch instead, which
rounds a little differently). Alone, a part's result does not depend on the other parts, so the segment
cache (spectrosynth.segment_cache) can skip a track that did not change. Every part is rendered for the
whole song's length, so stems line up and last as long as the mix.

Level: --gain, --normalize and --loudness set the mix's level; every stem is scaled exactly as its mix
was, so stereo stems summed at unity in a DAW give the stereo mix, sample for sample (up to rounding).
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spectrosynth.audio import AudioWriter, WriteSummary, check_output
from spectrosynth.automation import Automation, automation
from spectrosynth.errors import OutputError
from spectrosynth.midi import Score
from spectrosynth.outputs import OutputSettings, SongOutput, audio_writer
from spectrosynth.remap import Remap
from spectrosynth.songs import prepare_song, remap_score
from spectrosynth.tokens import PreparedSong, model_notes, prepare
from spectrosynth.vocoder import StreamingVocoder, Vocoder

VOLUME, PAN, EXPRESSION = 7, 10, 11
DEFAULTS = {VOLUME: 100, PAN: 64, EXPRESSION: 127}  # General MIDI's power-on values
GM_FAMILIES = ("piano", "chromatic-percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
               "reed", "pipe", "synth-lead", "synth-pad", "synth-effects", "ethnic", "percussive",
               "sound-effects")  # fmt: skip


@dataclass(frozen=True)
class Placement:
    """Where a track sits in a stereo mix: its channel's pan, volume and expression (0-127)."""

    pan: int = DEFAULTS[PAN]
    volume: int = DEFAULTS[VOLUME]
    expression: int = DEFAULTS[EXPRESSION]

    @property
    def level(self) -> float:
        """Amplitude factor of volume and expression: (volume/127)^2 (expression/127)^2."""
        return (self.volume / 127) ** 2 * (self.expression / 127) ** 2

    def gains(self) -> tuple[float, float]:
        """(left, right) amplitude factors: the pan law times the level."""
        angle = math.pi / 2 * max(0, self.pan - 1) / 126
        return math.cos(angle) * self.level, math.sin(angle) * self.level

    def place(self, audio: np.ndarray) -> np.ndarray:
        """Mono (n,) -> stereo (n, 2)."""
        return audio[:, None] * np.asarray(self.gains(), np.float32)[None, :]


def placement(score: Score, track: int, start: float = 0.0) -> Placement:
    """The pan, volume and expression in force on track `track`'s (0-based) channel at its first note
    sounding at or after `start` (seconds in the file)."""
    channel = score.tracks[track].channel
    onsets = [max(n.start, start) for n in score.notes if n.track == track and n.end > start]
    if channel is None or not onsets:
        return Placement()
    first = min(onsets)
    values = dict(DEFAULTS)
    for c in score.controls:
        if c.time > first + 1e-9:
            break
        if c.channel == channel:
            values[c.number] = c.value
    return Placement(values[PAN], values[VOLUME], values[EXPRESSION])


@dataclass
class Part:
    """One row of a song's batch: the whole song (`track` None) or one track alone."""

    song: PreparedSong
    track: int | None = None  # 1-based, as `inspect` numbers tracks
    stem: str | None = None  # file name of its stem, without the extension
    placement: Placement | None = None  # in a stereo mix, at its first note
    automation: Automation | None = None  # in a stereo mix, through the song (None: `placement` throughout)


@dataclass
class SongParts:
    """What to render for one song: the parts, which of them makes the mix, and the notices."""

    song: PreparedSong  # the whole song, as a plain render sees it
    parts: list[Part]
    channels: int  # of the mix
    stems: bool  # whether track parts are written as stem files
    notices: list[str]

    @property
    def joint(self) -> Part | None:
        return next((p for p in self.parts if p.track is None), None)

    @property
    def tracks(self) -> list[Part]:
        return [p for p in self.parts if p.track is not None]


def _needs_tracks(output: OutputSettings, stems: bool) -> bool:
    """Whether a render takes more than the one joint part: stems, or a stereo mix made of tracks."""
    return stems or output.channels == 2


def stem_name(score: Score, index: int) -> str:
    """`03-strings-violin`: the track number (padded so that names sort), its General MIDI family and the
    program it is played as; drums are `10-drums`."""
    width = max(2, len(str(len(score.tracks))))
    track = score.tracks[index]
    if track.is_drum:
        what = "drums"
    else:
        from spectrosynth.instruments import program_name

        what = f"{GM_FAMILIES[track.program // 8]}-{_slug(program_name(track.program))}"
    return f"{index + 1:0{width}d}-{what}"


def plan_parts(
    score: Score,
    remap: Remap,
    start: float = 0.0,
    duration: float | None = None,
    output: OutputSettings | None = None,
    label: str | None = None,
    stems: bool = False,
) -> SongParts:
    """The parts of a song to render for `output.channels` and `stems`, with the notices of
    `songs.prepare_song` and one for each track left out of the stems (muted, or silent in the window)."""
    output = output or OutputSettings()
    played, notices = remap_score(score, remap, label)  # once, for the song and every track
    song, more = prepare_song(played, Remap(), start, duration, output, label)
    notices += more
    parts = []
    if output.channels == 1:
        parts.append(Part(song))
    if _needs_tracks(output, stems):
        whole = model_notes(played)[1]  # every part lasts as long as the song
        prefix = f"{label}: " if label else ""
        for track in played.tracks:
            number = track.index + 1
            if getattr(track, "muted", False):
                notices.append(f"{prefix}track {number} is muted: no stem")
                continue
            alone = _alone(played, track.index)
            part_song = prepare(alone, start=start, length=duration, min_duration=whole)
            if not part_song.num_notes:
                where = " in the rendered window" if start or duration is not None else ""
                notices.append(f"{prefix}track {number} has no notes{where}: no stem")
                continue
            moves = automation(played, track.index, start)
            parts.append(Part(part_song, number, stem_name(played, track.index), moves.initial, moves))
        if output.channels == 2 and not any(p.track for p in parts):
            parts.append(Part(song, placement=Placement()))  # nothing to place: the (silent) song itself
    return SongParts(song, parts, output.channels, stems, notices)


def _alone(score: Score, index: int) -> Score:
    """The score with only track `index` playing: what --mute of every other track gives."""
    notes = [n for n in score.notes if n.track == index]
    pedals = [p for p in score.pedals if p.track == index]
    end = max((n.end for n in notes), default=0.0)
    return replace(score, notes=notes, pedals=pedals, end_time=end)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def stem_paths(parts: SongParts, folder: str | Path, fmt: str) -> list[Path]:
    """The stem file of each track part, in part order."""
    return [Path(folder) / f"{p.stem}.{fmt}" for p in parts.tracks]


@dataclass(frozen=True)
class PartsSummary:
    """What `PartsOutput.finish()` wrote: the mix, and each stem."""

    mix: WriteSummary
    stems: list[WriteSummary]


class PartsOutput:
    """Receives one segment of every part at a time and writes the mix (and the stems) progressively.

    The mix: the joint part's audio (mono), or the track parts placed by their `Automation` (or a fixed
    `Placement`) and summed (stereo).
    A stem: a track part alone, mono, or placed as in the mix when the mix is stereo. Like SongOutput: use
    as a context manager; on an error nothing is left behind; `finish()` publishes the stems, then the mix.
    """

    def __init__(
        self,
        parts: SongParts,
        vocoder: Vocoder,
        output: str,
        settings: OutputSettings,
        force: bool = False,
        stems_dir: str | Path | None = None,
        mel_out: str | None = None,
        stems_force: bool | None = None,
    ):
        if parts.stems and stems_dir is None:
            raise ValueError("stems need a folder")
        if mel_out is not None and parts.joint is None:
            raise OutputError("a stereo mix of tracks has no single spectrogram to save; use --channels 1")
        self.parts = parts
        self._files = contextlib.ExitStack()
        try:
            self._open(vocoder, output, settings, force, stems_dir, mel_out, stems_force)
        except BaseException:  # an output that cannot be written: remove what was opened before it
            self._files.close()
            raise

    def _open(self, vocoder, output, settings, force, stems_dir, mel_out, stems_force) -> None:
        parts = self.parts
        self._joint = None
        if parts.joint is not None:  # the mono mix: the song's own output, spectrogram and all
            self._joint = SongOutput(parts.joint.song, vocoder, output, settings, force, mel_out)
            self._files.callback(self._joint.abort)
            self.mix = self._joint.writer
        else:
            self.mix = self._writer(output, settings, force, channels=2)
        self.keep = settings.samples(parts.song)
        self._written = 0
        self._voices = [StreamingVocoder(vocoder) for p in parts.parts if p is not parts.joint]
        self.stem_writers: list[AudioWriter] = []
        if parts.stems:
            folder = Path(stems_dir)
            if not folder.exists():
                folder.mkdir(parents=True)
                self._files.callback(_remove_if_empty, folder)  # runs last: after the writers' aborts
            stem_force = force if stems_force is None else stems_force
            for path in stem_paths(parts, folder, settings.fmt):
                self.stem_writers.append(self._writer(
                    str(path), settings, stem_force, channels=parts.channels, normalize=False, loudness=None,
                    deferred_level=True,
                ))  # fmt: skip

    def _writer(self, path: str, settings: OutputSettings, force: bool, **level) -> AudioWriter:
        writer = audio_writer(path, settings, force, **level)
        self._files.callback(writer.abort)  # a no-op once it is closed
        return writer

    def __enter__(self) -> PartsOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def add(self, mels: list[np.ndarray]) -> None:
        """The next segment's log-mel spectrogram (256, 128) of every part, in `parts.parts` order."""
        if len(mels) != len(self.parts.parts):
            raise ValueError(f"one spectrogram per part: {len(self.parts.parts)}, not {len(mels)}")
        others = []
        for part, mel in zip(self.parts.parts, mels, strict=True):
            if part is self.parts.joint:
                self._joint.add(mel)
            else:
                others.append(mel)
        self._tracks([v.feed(m) for v, m in zip(self._voices, others, strict=True)])

    def finish(self) -> PartsSummary:
        """Vocode what is left; publish the stems, each at the mix's level, then the mix."""
        self._tracks([v.finish() for v in self._voices])
        if self._joint is not None:
            self._joint.drain()
        level = self.mix.level() if self.stem_writers else None  # what the mix will apply
        stems = [w.close(level=level) for w in self.stem_writers]
        mix = self._joint.finish() if self._joint is not None else self.mix.close()
        self._files.close()
        return PartsSummary(mix, stems)

    def abort(self) -> None:
        """Remove every temporary; targets are untouched."""
        self._files.close()

    def _tracks(self, chunks: list[list[np.ndarray]]) -> None:
        """The tracks' newly vocoded audio (the same length for every track: same frames, same vocoder)."""
        if not self._voices:
            return
        audio = [np.concatenate(c) if c else np.zeros(0, np.float32) for c in chunks]
        take = min(len(audio[0]), self.keep - self._written)
        if take <= 0:
            return
        tracks = [p for p in self.parts.parts if p is not self.parts.joint]
        placed = [self._place(p, a[:take]) if self.parts.channels == 2 else a[:take]
                  for p, a in zip(tracks, audio, strict=True)]  # fmt: skip
        if self._joint is None:
            self.mix.write(np.sum(placed, axis=0, dtype=np.float32))
        for writer, one in zip(self.stem_writers, placed if self.parts.stems else [], strict=True):
            writer.write(one)
        self._written += take

    def _place(self, part: Part, audio: np.ndarray) -> np.ndarray:
        """A track's next samples, placed: this stretch of its automation, or its fixed placement."""
        if part.automation is None:
            return part.placement.place(audio)
        return part.automation.place(audio, self._written)


def _remove_if_empty(folder: Path) -> None:
    """A stem folder made for a render that did not finish, if nothing else went into it."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def check_stem_outputs(parts: SongParts, folder: str | Path, fmt: str, force: bool) -> None:
    """Fail at once, before the long render, on a stem file that exists (without --force) or a stem folder
    that cannot be made or written (a missing folder is made, in a folder that exists)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder; give --stems a folder")
    if not folder.exists():
        check_output(str(folder), force=False)  # its parent exists and is writable
        return
    for path in stem_paths(parts, folder, fmt):
        check_output(str(path), force)


def sample_parts(
    synth, parts: SongParts, steps: int | None, seed: int, callback=None, *, cache=None, use=None, **sampling
):
    """Each segment of every part (each part sampled alone, its noise from its own generator seeded with
    `seed`: exactly what a render of that part alone gives): yields one list of log-mel spectrograms
    (256, 128) per segment, in `parts.parts` order. `sampling`: Synthesizer.iter_parts's sampler, guidance,
    guidance_interval, sampler_options; cache: a SegmentCache (spectrosynth.segment_cache) to take
    unchanged segments from, and `use` (a CacheUse) to learn which came from it."""
    songs = [[s.tokens for s in p.song.segments] for p in parts.parts]
    yield from synth.iter_parts(songs, steps, seed, callback=callback, cache=cache, use=use, **sampling)
