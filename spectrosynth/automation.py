"""A track's pan and level as they move through the song: the file's CC10, CC7 and CC11 as gain envelopes.

A stereo mix (`--channels 2`, and its stereo stems) places each track by its MIDI channel's pan and level
(`stems.Placement`: RP-036's constant-power pan, GM2's 40 log10(v/127) dB for volume and expression).
`Automation` follows them over time, as a General MIDI synthesizer does:

* the starting values are those in force at the track's first note in the rendered window (the latest on
  its channel at or before that note, from any MTrk, GM's defaults 64 / 100 / 127 for unset ones): what
  `stems.placement` gives. A value sent before `--start` counts; set-up messages sent just before or with
  the first note (the track is silent until then) never ramp;
* each later change (CC10, CC7 or CC11 on the track's channel; those at one instant taken together) is a
  new target for the track's gains, reached by a linear ramp of RAMP_SECONDS from the value the gains had
  at that instant, starting at the change's sample: round((time - start) * rate), `time` being the file's
  time in seconds as `midi.read_midi` reads it (through the tempo map). A change that comes mid-ramp ramps
  on from where the gains are, so the envelope is continuous;
* the ramped quantities are the amplitude factors themselves ((left, right) for a stereo placement, the
  level for a mono one), so within a ramp the gain moves by (new - old) / ramp samples each sample.

The envelope is never stored as audio-length arrays: it is the sorted list of changes, and `gains_at` /
`levels_at` compute any range of samples from it on demand, each sample from its own index alone, so a
render written segment by segment is placed exactly as it would be at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from spectrosynth.constants import SAMPLE_RATE

if TYPE_CHECKING:
    from spectrosynth.midi import Score
    from spectrosynth.stems import Placement

# Length of the linear ramp from one value to the next. A gain that steps multiplies the sound by a step,
# whose spectrum falls only as 1/f: every partial is spread across the spectrum, a click (and a curve of
# 7-bit steps, zipper noise). A linear ramp of T seconds keeps that spread within about 1/T of each partial
# (200 Hz here; it falls as 1/f^2 beyond), which is heard as a change of level, not a click, even for a jump
# from full level to silence. 5 ms is half the model's 10 ms time grid: a change still lands within the
# step of the note it goes with, and a controller stream every 10 ms or more (a DAW's curve, a ramp of
# events every 50 ms) still reaches each value before the next one comes.
RAMP_SECONDS = 0.005


def ramp_samples(rate: int) -> int:
    """The ramp's length in samples at `rate` (80 at 16 kHz, 240 at 48 kHz)."""
    return max(1, round(RAMP_SECONDS * rate))


@dataclass(frozen=True)
class _Table:
    """The envelope at one sample rate: each change's sample, the value the gains had there (its ramp's
    origin) and its target, columns (left, right, level)."""

    at: np.ndarray  # (E,) int64, sorted
    origin: np.ndarray  # (E, 3) float64
    target: np.ndarray  # (E, 3) float64
    ramp: int


class Automation:
    """A track's placement through the rendered window: `initial` from its first note, then `changes`,
    each (seconds from the window's start, the Placement from then on), in time order."""

    def __init__(self, initial: Placement, changes: list[tuple[float, Placement]] | tuple = ()):
        self.initial = initial
        self.changes = tuple(changes)
        if any(b[0] < a[0] for a, b in zip(self.changes, self.changes[1:], strict=False)):
            raise ValueError("automation changes must be in time order")
        self._tables: dict[int, _Table] = {}

    def __repr__(self) -> str:
        return f"Automation({self.initial!r}, {len(self.changes)} changes)"

    @property
    def events(self) -> int:
        """How many times the track's pan or level changes after its first note."""
        return len(self.changes)

    @property
    def pan_automated(self) -> bool:
        """Whether the pan changes after the first note."""
        return any(p.pan != self.initial.pan for _, p in self.changes)

    @property
    def level_automated(self) -> bool:
        """Whether the volume or the expression changes after the first note."""
        return any((p.volume, p.expression) != (self.initial.volume, self.initial.expression)
                   for _, p in self.changes)  # fmt: skip

    def gains_at(self, samples: range, rate: int = SAMPLE_RATE) -> np.ndarray:
        """(left, right) amplitude factors (len(samples), 2) float32 of samples `samples` at `rate` (sample
        0 is the window's start): the pan law times the level, ramped."""
        return self._values(samples, rate, slice(0, 2))

    def levels_at(self, samples: range, rate: int = SAMPLE_RATE) -> np.ndarray:
        """The level alone (len(samples),) float32: volume and expression, ramped, without the pan."""
        return self._values(samples, rate, slice(2, 3))[:, 0]

    def place(self, audio: np.ndarray, offset: int = 0, rate: int = SAMPLE_RATE) -> np.ndarray:
        """Mono (n,) -> stereo (n, 2): `audio` is samples offset .. offset + n of the track at `rate`."""
        return audio[:, None] * self.gains_at(range(offset, offset + len(audio)), rate)

    @cached_property
    def _initial(self) -> np.ndarray:
        return _vector(self.initial)

    def _values(self, samples: range, rate: int, columns: slice) -> np.ndarray:
        """Samples `samples` of columns `columns`, float32, computed piece by piece: a constant stretch, or
        a ramp's samples, each from its own index alone (so any split of a range gives the same values)."""
        if samples.step != 1:
            raise ValueError("the samples must be a range with step 1")
        first, stop = samples.start, max(samples.start, samples.stop)
        out = np.empty((stop - first, columns.stop - columns.start), np.float32)
        out[:] = self._initial[columns]
        if not self.changes or stop == first:
            return out
        table = self._table(rate)
        at, changes = table.at, len(table.at)
        k = int(np.searchsorted(at, first, side="right")) - 1  # the change in force at `first` (-1: none)
        while True:
            following = int(at[k + 1]) if k + 1 < changes else stop
            if k >= 0:  # change k holds from its sample to the next change's: its ramp, then its target
                begin, end = max(first, int(at[k])), min(stop, following)
                ramp_end = min(end, int(at[k]) + table.ramp)
                origin, target = table.origin[k, columns], table.target[k, columns]
                if begin < ramp_end:
                    frac = ((np.arange(begin, ramp_end, dtype=np.int64) - at[k]) / table.ramp)[:, None]
                    out[begin - first : ramp_end - first] = origin + (target - origin) * frac
                if max(begin, ramp_end) < end:
                    out[max(begin, ramp_end) - first : end - first] = target
            if following >= stop:
                return out
            k += 1

    def _table(self, rate: int) -> _Table:
        table = self._tables.get(rate)
        if table is None:
            ramp = ramp_samples(rate)
            at = np.array([math.floor(t * rate + 0.5) for t, _ in self.changes], np.int64)
            target = np.array([_vector(p) for _, p in self.changes])
            origin = np.empty_like(target)
            value = self._initial
            for i in range(len(at)):
                if i:  # where the previous ramp has brought the gains at this change's sample
                    frac = (at[i] - at[i - 1]) / ramp
                    before, goal = origin[i - 1], target[i - 1]
                    value = goal if frac >= 1 else before + (goal - before) * frac
                origin[i] = value
            table = self._tables[rate] = _Table(at, origin, target, ramp)
        return table


def _vector(placement: Placement) -> np.ndarray:
    """(left, right, level) of a placement, float64."""
    return np.array([*placement.gains(), placement.level])


def automation(score: Score, track: int, start: float = 0.0) -> Automation:
    """The pan and level of track `track` (0-based) through a render from `start` (seconds in the file):
    the values in force at its first note sounding at or after `start` (`stems.placement`), then every
    later CC10, CC7 and CC11 change on its channel, from any MTrk."""
    from spectrosynth.stems import DEFAULTS, EXPRESSION, PAN, VOLUME, Placement

    channel = score.tracks[track].channel
    onsets = [max(n.start, start) for n in score.notes if n.track == track and n.end > start]
    if channel is None or not onsets:
        return Automation(Placement())
    first = min(onsets)
    values = dict(DEFAULTS)
    initial = None
    changes: list[tuple[float, Placement]] = []
    for c in score.controls:  # in time order
        if c.channel != channel:
            continue
        if c.time > first + 1e-9 and initial is None:
            initial = Placement(values[PAN], values[VOLUME], values[EXPRESSION])
        values[c.number] = c.value
        if initial is None:
            continue
        now = Placement(values[PAN], values[VOLUME], values[EXPRESSION])
        when = c.time - start
        if changes and when - changes[-1][0] <= 1e-9:  # controllers at one instant act together
            changes.pop()
        previous = changes[-1][1] if changes else initial
        if now != previous:
            changes.append((when, now))
    if initial is None:
        initial = Placement(values[PAN], values[VOLUME], values[EXPRESSION])
    return Automation(initial, changes)
