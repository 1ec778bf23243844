"""Reading MIDI files into notes, the way the published model's tokenizer sees them.

Parsing is pretty_midi's (the reference parses with it too, through note-seq). Only notes and the sustain
pedal (CC64) matter to the model; velocity is reduced to on/off later, and pitch bends and every other
controller are dropped.
"""

from __future__ import annotations

import collections
import io
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from spectrosynth.errors import MidiError

SUSTAIN_CC = 64
_FIX = "re-export it from the program that made it, or download it again"


@dataclass
class Note:
    """One note. Compared by value, as note-seq compares its notes (sustain handling relies on it)."""

    pitch: int
    velocity: int
    start: float  # seconds
    end: float  # seconds
    program: int  # General MIDI program 0..127
    track: int  # 0-based index into Score.tracks
    is_drum: bool


@dataclass(frozen=True)
class Pedal:
    """A sustain-pedal (CC64) change."""

    time: float
    value: int
    track: int


@dataclass(frozen=True)
class ChannelControl:
    """A channel volume (CC7), pan (CC10) or expression (CC11) change, from any MTrk of the file."""

    time: float
    channel: int  # 0-based
    number: int
    value: int


MIX_CONTROLS = (7, 10, 11)  # channel volume, pan, expression: what a stereo mix takes from the file


@dataclass
class Track:
    """A (MIDI track, channel, program) combination, as pretty_midi splits a file into instruments."""

    index: int  # 0-based; shown to users as index + 1
    name: str
    program: int
    is_drum: bool
    channel: int | None  # 0-based MIDI channel; None if it could not be recovered
    midi_track: int | None  # index of the MTrk chunk it came from
    num_notes: int = 0


@dataclass
class Score:
    """Everything the tokenizer and `inspect` need from a MIDI file."""

    source: str  # file name for messages
    tracks: list[Track]
    notes: list[Note]  # in note-seq's order: track by track, each in file order
    pedals: list[Pedal] = field(default_factory=list)
    end_time: float = 0.0  # end of the last note, before the sustain pedal is applied
    resolution: int = 0  # ticks per quarter note
    tempo_changes: int = 0
    time_signature_changes: int = 0
    controls: list[ChannelControl] = field(default_factory=list)  # MIX_CONTROLS, in time order


def read_midi(source: str | os.PathLike | bytes, name: str | None = None) -> Score:
    """Read a MIDI file (a path or its bytes). Raises MidiError with a one-line message naming the file."""
    if isinstance(source, bytes):
        data, label = source, name or "<stdin>"
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise MidiError(f"{label}: no such file; check the path")
        if path.is_dir():
            raise MidiError(f"{label}: is a folder, not a MIDI file; give the path of a .mid file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise MidiError(f"{label}: cannot be read ({e.strerror or e}); check its permissions") from e
    return _parse(data, label)


def _parse(data: bytes, label: str) -> Score:
    import mido

    from spectrosynth.instruments import pretty_midi

    if not data:
        raise MidiError(f"{label}: the file is empty (0 bytes); it is not a MIDI file")
    if not data.startswith(b"MThd"):
        raise MidiError(f"{label}: not a MIDI file (it does not start with 'MThd'); give a .mid file")
    try:
        # clip=True: data bytes above 127 (seen in files from buggy sequencers) are clipped, not fatal.
        midi_file = mido.MidiFile(file=io.BytesIO(data), clip=True)
    except EOFError as e:
        raise MidiError(f"{label}: the MIDI file is truncated (it ends inside a track); {_FIX}") from e
    except Exception as e:  # mido raises many types for damaged files
        raise MidiError(f"{label}: the MIDI file is damaged ({_reason(e)}); {_FIX}") from e
    if not midi_file.tracks or not any(len(t) for t in midi_file.tracks):
        return Score(source=label, tracks=[], notes=[], resolution=midi_file.ticks_per_beat)
    try:
        with warnings.catch_warnings():
            # pretty_midi warns about tempo events outside track 0; they are still honoured.
            warnings.simplefilter("ignore", RuntimeWarning)
            pm = pretty_midi.PrettyMIDI(mido_object=midi_file)
    except Exception as e:
        raise MidiError(f"{label}: the MIDI file is damaged ({_reason(e)}); {_FIX}") from e

    keys = _instrument_keys(midi_file)
    if [k[0] for k in keys] != [i.program for i in pm.instruments]:
        keys = [(i.program, None, None) for i in pm.instruments]  # unknown pretty_midi behaviour: no channels

    tracks, notes, pedals = [], [], []
    end_time = 0.0
    for index, (inst, (_, channel, midi_track)) in enumerate(zip(pm.instruments, keys, strict=True)):
        program, is_drum = int(inst.program), bool(inst.is_drum)
        tracks.append(Track(index, inst.name, program, is_drum, channel, midi_track, len(inst.notes)))
        for n in inst.notes:
            # note-seq: total_time is the largest note end
            if not end_time or n.end > end_time:
                end_time = n.end
            notes.append(
                Note(int(n.pitch), int(n.velocity), float(n.start), float(n.end), program, index, is_drum)
            )
        pedals.extend(
            Pedal(float(c.time), int(c.value), index) for c in inst.control_changes if c.number == SUSTAIN_CC
        )
    return Score(
        source=label,
        tracks=tracks,
        notes=notes,
        pedals=pedals,
        end_time=float(end_time),
        resolution=pm.resolution,
        tempo_changes=len(pm.get_tempo_changes()[0]),
        time_signature_changes=len(pm.time_signature_changes),
        controls=_mix_controls(midi_file, pm),
    )


def _mix_controls(midi_file, pm) -> list[ChannelControl]:
    """The file's CC7, CC10 and CC11 changes per MIDI channel, from every MTrk: a synthesizer applies a
    controller to its channel whichever track carries it (pretty_midi keeps only those in a note's MTrk)."""
    found = []
    for mtrk in midi_file.tracks:
        for message in mtrk:  # pretty_midi has turned the messages' delta times into absolute ticks
            if message.type == "control_change" and message.control in MIX_CONTROLS:
                found.append((message.time, message.channel, message.control, message.value))
    found.sort(key=lambda c: c[0])  # stable: a track's own order within a tick
    controls = []
    for tick, channel, number, value in found:
        try:
            controls.append(ChannelControl(float(pm.tick_to_time(tick)), channel, number, value))
        except IndexError:  # past pretty_midi's tick map (nothing plays there)
            break
    return controls


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


def _instrument_keys(midi_file) -> list[tuple[int, int, int]]:
    """(program, channel, MTrk index) of each pretty_midi instrument, in pretty_midi's order.

    pretty_midi creates an instrument when a note on a new (program, channel, track) first closes, but does
    not keep the channel; this replays its note pairing (on MIDI absolute ticks) to recover it.
    """
    keys: dict[tuple[int, int, int], None] = {}
    for track_idx, track in enumerate(midi_file.tracks):
        open_notes: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
        programs = [0] * 16
        for ev in track:
            if ev.type == "program_change":
                programs[ev.channel] = ev.program
            elif ev.type == "note_on" and ev.velocity > 0:
                open_notes[(ev.channel, ev.note)].append(ev.time)
            elif ev.type == "note_off" or (ev.type == "note_on" and ev.velocity == 0):
                key = (ev.channel, ev.note)
                if key in open_notes:
                    starts = open_notes[key]
                    closed = [s for s in starts if s != ev.time]
                    kept = [s for s in starts if s == ev.time]
                    if closed:
                        keys.setdefault((programs[ev.channel], ev.channel, track_idx), None)
                    if closed and kept:
                        open_notes[key] = kept
                    else:
                        del open_notes[key]
    return list(keys)


# Event kinds for the sustain pass; the order breaks ties at equal times (as note-seq does):
# pedal down, pedal up, note on, note off.
_SUSTAIN_ON, _SUSTAIN_OFF, _NOTE_ON, _NOTE_OFF = range(4)


def apply_sustain(notes: list[Note], pedals: list[Pedal], end_time: float) -> tuple[list[Note], float]:
    """Lengthen notes held by the sustain pedal, exactly as note-seq's `apply_sustain_control_changes`.

    Per track: a note released while the pedal is down rings until the pedal is lifted or the same pitch is
    struck again; a re-struck note that would become zero-length is removed. Drums are not changed.
    Returns new notes (the input is left alone) and the new end time.
    """
    notes = [replace(n) for n in notes]
    events = [(n.start, _NOTE_ON, n) for n in notes if not n.is_drum]
    events += [(n.end, _NOTE_OFF, n) for n in notes if not n.is_drum]
    events += [(p.time, _SUSTAIN_ON if p.value >= 64 else _SUSTAIN_OFF, p) for p in pedals]
    events.sort(key=lambda e: (e[0], e[1]))

    active: dict[int, list[Note]] = collections.defaultdict(list)
    pedal_down: dict[int, bool] = collections.defaultdict(bool)
    time = 0.0
    for time, kind, ev in events:
        if kind == _SUSTAIN_ON:
            pedal_down[ev.track] = True
        elif kind == _SUSTAIN_OFF:
            pedal_down[ev.track] = False
            still = []
            for n in active[ev.track]:
                if n.end < time:  # ringing only because of the pedal: ends now
                    n.end = time
                    end_time = max(end_time, time)
                else:
                    still.append(n)
            active[ev.track] = still
        elif kind == _NOTE_ON:
            if pedal_down[ev.track]:
                still = []
                for n in active[ev.track]:
                    if n.pitch == ev.pitch:
                        n.end = time
                        if n.start == n.end:
                            notes.remove(n)
                    else:
                        still.append(n)
                active[ev.track] = still
            active[ev.track].append(ev)
        elif not pedal_down[ev.track] and ev in active[ev.track]:  # note off
            active[ev.track].remove(ev)
    for held in active.values():  # still held by a pedal that never came up
        for n in held:
            n.end = time
            end_time = time
    return notes, end_time
