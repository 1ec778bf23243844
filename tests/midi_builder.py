"""Write small MIDI files for tests from a compact description.

    song = Song([
        Track([Note(60, 0.0, 1.0), Note(64, 0.5, 2.0, velocity=80)], program=40, name="violin"),
        Track([Note(36, 0.0, 0.1)], channel=9),  # drums
        Track([Note(48, 0.0, 0.5)], controls=pedal(0.2, 3.0)),  # sustain pedal down 0.2 s, up 3.0 s
    ])
    data = song.to_bytes()

Times are seconds by default (converted to ticks through the song's tempo map) or raw ticks with
`unit="ticks"`. The default resolution (500 ticks per beat at 120 bpm) makes one tick exactly 1 ms, so
times such as 5.12 s land on a tick. Each `Track` becomes its own MIDI track (MTrk chunk) unless several
share an `mtrk` number. `Raw` events are written exactly in the order given, which is how zero-length notes
(note-on and note-off at the same tick) and overlapping notes of one pitch are made.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import mido

SUSTAIN = 64  # CC number of the sustain pedal


@dataclass(frozen=True)
class Note:
    pitch: int
    start: float
    end: float
    velocity: int = 100


@dataclass(frozen=True)
class Control:
    """A control change, e.g. Control(1.0, SUSTAIN, 127) puts the sustain pedal down at 1 s."""

    time: float
    number: int
    value: int


@dataclass(frozen=True)
class Raw:
    """A note-on or note-off written as is, in list order after the track's other events at that tick."""

    time: float
    type: Literal["note_on", "note_off"]
    pitch: int
    velocity: int = 100


def pedal(down: float, up: float | None = None) -> list[Control]:
    """Sustain pedal pressed at `down` and released at `up` (never released if None)."""
    events = [Control(down, SUSTAIN, 127)]
    if up is not None:
        events.append(Control(up, SUSTAIN, 0))
    return events


@dataclass
class Track:
    notes: list[Note] = field(default_factory=list)
    program: int = 0
    channel: int = 0  # 0-based; 9 is the General MIDI drum channel
    name: str | None = None
    controls: list[Control] = field(default_factory=list)
    raw: list[Raw] = field(default_factory=list)
    mtrk: int | None = None  # tracks with the same number share one MTrk chunk


@dataclass
class Song:
    tracks: list[Track]
    tempos: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 120.0)])  # (time, bpm)
    time_signatures: list[tuple[float, int, int]] = field(default_factory=lambda: [(0.0, 4, 4)])
    ticks_per_beat: int = 500
    unit: Literal["seconds", "ticks"] = "seconds"

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.to_mido().save(file=buffer)
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        Path(path).write_bytes(self.to_bytes())
        return Path(path)

    def to_mido(self) -> mido.MidiFile:
        tempo_map = self._tempo_map()
        conductor = [(tick, 0, mido.MetaMessage("set_tempo", tempo=us)) for _, tick, us in tempo_map]
        for time, numerator, denominator in self.time_signatures:
            message = mido.MetaMessage("time_signature", numerator=numerator, denominator=denominator)
            conductor.append((self._ticks(time, tempo_map), 1, message))

        chunks: dict[object, list[tuple[int, int, mido.Message]]] = {}
        for index, track in enumerate(self.tracks):
            events = chunks.setdefault(index if track.mtrk is None else ("mtrk", track.mtrk), [])
            events.extend(self._track_events(track, tempo_map))

        midi = mido.MidiFile(type=1, ticks_per_beat=self.ticks_per_beat)
        for events in [conductor, *chunks.values()]:
            midi.tracks.append(_to_delta_times(events))
        return midi

    def _track_events(self, track: Track, tempo_map) -> list[tuple[int, int, mido.Message]]:
        """(tick, order, message); at one tick: name, program, note-offs, controls, note-ons, raw events."""
        ch = track.channel
        events = []
        if track.name is not None:
            events.append((0, 0, mido.MetaMessage("track_name", name=track.name)))
        events.append((0, 1, mido.Message("program_change", channel=ch, program=track.program)))
        for n in track.notes:
            on = mido.Message("note_on", channel=ch, note=n.pitch, velocity=n.velocity)
            events.append((self._ticks(n.start, tempo_map), 4, on))
            off = mido.Message("note_off", channel=ch, note=n.pitch, velocity=0)
            events.append((self._ticks(n.end, tempo_map), 2, off))
        for c in track.controls:
            message = mido.Message("control_change", channel=ch, control=c.number, value=c.value)
            events.append((self._ticks(c.time, tempo_map), 3, message))
        for r in track.raw:
            message = mido.Message(r.type, channel=ch, note=r.pitch, velocity=r.velocity)
            events.append((self._ticks(r.time, tempo_map), 5, message))
        return events

    def _tempo_map(self) -> list[tuple[float, int, int]]:
        """(time in song units, tick, microseconds per beat) of each tempo change, in order."""
        tempo_map: list[tuple[float, int, int]] = []
        for time, bpm in sorted(self.tempos):
            tempo_map.append((time, self._ticks(time, tempo_map), mido.bpm2tempo(bpm)))
        return tempo_map

    def _ticks(self, time: float, tempo_map) -> int:
        if self.unit == "ticks":
            return int(round(time))
        start, tick, us = 0.0, 0, 500_000  # MIDI's default tempo, 120 bpm, until the first change
        for change in tempo_map:
            if change[0] <= time:
                start, tick, us = change
        return tick + int(round((time - start) * 1e6 / us * self.ticks_per_beat))


def _to_delta_times(events: list[tuple[int, int, mido.Message]]) -> mido.MidiTrack:
    track = mido.MidiTrack()
    now = 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):  # stable: raw events keep their order
        track.append(message.copy(time=tick - now))
        now = tick
    return track
