"""MIDI notes -> the token segments the notes encoder reads.

Equivalent to the reference `MidiProcessor` (MT3's "notes + ties" encoding, one velocity bin), computed
segment by segment instead of through per-10-ms shift events:

1. Notes are sorted by (is_drum, program, pitch). The events are all non-drum note-offs, then all note-ons
   (drums included), stably sorted by time and put on a 10 ms grid: step = round(t * 100).
2. A note-on is [program, velocity 1, pitch], a note-off [program, velocity 0, pitch], a drum hit
   [velocity 1, drum]. Note-offs sort before note-ons at equal times.
3. Segment j covers steps [512 j, 512 (j + 1)) (5.12 s); the last segment also takes any later event.
   It starts with its "tie section": every note sounding at the segment start, as [program, pitch] pairs
   sorted by (program, pitch), then a tie token. Sounding notes get no new note-on.
4. Run-length encoding: before the first event at a new time comes one shift token holding the steps since
   the segment start. A velocity or program token equal to the last one emitted in the segment is dropped.
5. Token id = raw codec index + 3; EOS (1) ends the segment. The reference pads with PAD (0) to 2048.

Reference quirks kept for exact parity: the number of segments comes from the frame grid
(frames = int(T * 16000) // 320 + 1 for a song of T seconds), and segments that start after the last event
reuse the tie section in force *before* the last event time (an MT3 quirk).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from spectrosynth import codec as C
from spectrosynth.constants import (
    FRAMES_PER_SEGMENT,
    HOP_LENGTH,
    INPUT_LENGTH,
    MAX_SHIFT_STEPS,
    SAMPLE_RATE,
    SEGMENT_SECONDS,
    STEPS_PER_FRAME,
    STEPS_PER_SECOND,
    STEPS_PER_SEGMENT,
)
from spectrosynth.errors import SpectrosynthError
from spectrosynth.instruments import program_to_class
from spectrosynth.midi import Note, Score, apply_sustain

_OFF, _ON, _DRUM = 0, 1, 2
_PITCH_LAST = C.PITCH_BASE + 127
_VELOCITY = (C.VELOCITY_BASE, C.VELOCITY_BASE + 1)
_PROGRAM_LAST = C.PROGRAM_BASE + 127


def num_segments(duration: float) -> int:
    """Segments for a song whose last note ends at `duration` seconds (the reference's frame grid)."""
    num_samples = int(duration * SAMPLE_RATE)
    num_frames = num_samples // HOP_LENGTH + 1  # the reference always pads with 1..320 samples
    return math.ceil(num_frames / FRAMES_PER_SEGMENT)


def model_notes(score: Score) -> tuple[list[Note], float]:
    """The score's notes as the model renders them: sustain pedal applied, programs mapped to model classes.

    Returns the notes and the song's duration in seconds.
    """
    notes, end_time = apply_sustain(score.notes, score.pedals, score.end_time)
    for n in notes:
        if not n.is_drum:
            n.program = program_to_class(n.program)
    return notes, end_time


class NoteEvents:
    """A song's notes as the tokenizer's event list, from which the tokens of any window can be cut.

    Built once per song (steps 1-2 of the module docstring); `window` then gives the tokens of any span of
    10 ms steps, so training can draw 5.12 s chunks at any 20 ms offset (`chunk_tokens`) and get, on the
    5.12 s grid, exactly inference's segments (`tokenize_notes`). The sounding notes are snapshotted every
    512 steps, so a window's tie section replays at most one segment's events.
    """

    def __init__(self, notes: Iterable[Note], duration: float):
        notes = sorted(notes, key=lambda n: (n.is_drum, n.program, n.pitch))
        times = [n.end for n in notes if not n.is_drum] + [n.start for n in notes]
        values = [(_OFF, n.program, n.pitch, 0) for n in notes if not n.is_drum]
        values += [
            (_DRUM if n.is_drum else _ON, n.program, n.pitch, _velocity_bin(n.velocity)) for n in notes
        ]
        order = sorted(range(len(times)), key=times.__getitem__)  # stable, like np.argsort(kind="stable")
        self.steps = [round(times[i] * STEPS_PER_SECOND) for i in order]
        self.events = [values[i] for i in order]
        self.last_step = self.steps[-1] if self.steps else 0
        self.num_segments = num_segments(duration)
        self.end_step = self.num_segments * STEPS_PER_SEGMENT  # the end of the last grid segment
        # _snapshots[k]: the sounding notes after every event before step 512 k, for k up to the last event.
        self._snapshots: list[dict[tuple[int, int], int]] = [{}]
        self._snapshot_index = [0]  # events folded into each snapshot
        state, applied = {}, 0
        for k in range(1, self.last_step // STEPS_PER_SEGMENT + 1):
            applied = self._apply(state, applied, k * STEPS_PER_SEGMENT)
            self._snapshots.append(dict(state))
            self._snapshot_index.append(applied)

    def _apply(self, state: dict[tuple[int, int], int], applied: int, boundary: int) -> int:
        """Fold the events before step `boundary` (from index `applied` on) into `state`."""
        while applied < len(self.events) and self.steps[applied] < boundary:
            kind, program, pitch, velocity = self.events[applied]
            if kind != _DRUM:
                state[(pitch, program)] = velocity
            applied += 1
        return applied

    def sounding(self, step: int) -> list[tuple[int, int]]:
        """The (pitch, program) of every note sounding at `step`, sorted by (program, pitch): the tie section.

        As the reference: the state before the events at min(step, last event step) (an MT3 quirk for
        windows after the last event)."""
        boundary = min(step, self.last_step)
        k = max(0, boundary) // STEPS_PER_SEGMENT
        state = dict(self._snapshots[k])
        self._apply(state, self._snapshot_index[k], boundary)
        return sorted((key for key, v in state.items() if v), key=lambda key: (key[1], key[0]))

    def window(self, start: int, stop: int) -> list[int]:
        """Token ids (EOS included, no padding) of the steps [start, stop): its tie section, then its events
        with shifts counted from `start`. A window reaching the end of the last grid segment also takes any
        later event, as the reference's last segment does."""
        raw = [t for pitch, program in self.sounding(start) for t in (C.PROGRAM_BASE + program,
               C.PITCH_BASE + pitch)]  # fmt: skip
        raw.append(C.TIE)
        lo = bisect.bisect_left(self.steps, start)
        hi = len(self.steps) if stop >= self.end_step else bisect.bisect_left(self.steps, stop)
        return _run_length_encode(raw, self.steps[lo:hi], self.events[lo:hi], start)

    def segment(self, j: int) -> list[int]:
        """Grid segment j's tokens, as inference reads them."""
        return self.window(j * STEPS_PER_SEGMENT, (j + 1) * STEPS_PER_SEGMENT)

    def chunk_tokens(self, start_frame: int, frames: int = FRAMES_PER_SEGMENT) -> list[int]:
        """The tokens of `frames` spectrogram frames from frame `start_frame` (20 ms each): a training
        chunk. On the 5.12 s grid (start_frame = 256 j) this is segment j exactly."""
        start = start_frame * STEPS_PER_FRAME
        return self.window(start, start + frames * STEPS_PER_FRAME)


def tokenize_notes(notes: Iterable[Note], duration: float) -> list[list[int]]:
    """Token ids per segment, EOS included and no padding; a segment may exceed the model's 2048 positions."""
    events = NoteEvents(notes, duration)
    return [events.segment(j) for j in range(events.num_segments)]


def _velocity_bin(velocity: int) -> int:
    return 0 if velocity == 0 else math.ceil(velocity / 127)


def _run_length_encode(
    tie_section: list[int], steps: list[int], events: list[tuple], start: int
) -> list[int]:
    out: list[int] = []
    program_state = velocity_state = -1

    def emit(token: int) -> None:
        nonlocal program_state, velocity_state
        if C.PROGRAM_BASE <= token <= _PROGRAM_LAST:
            if token == program_state:
                return
            program_state = token
        elif token in _VELOCITY:
            if token == velocity_state:
                return
            velocity_state = token
        out.append(token)

    for token in tie_section:
        emit(token)
    emitted_step = start
    for step, (kind, program, pitch, velocity) in zip(steps, events, strict=True):
        if kind == _DRUM:
            group = (C.VELOCITY_BASE + velocity, C.DRUM_BASE + pitch)
        else:
            group = (C.PROGRAM_BASE + program, C.VELOCITY_BASE + velocity, C.PITCH_BASE + pitch)
        for token in group:
            if step > emitted_step and not _redundant(token, program_state, velocity_state):
                shift = step - start
                while shift > 0:  # one token per 10 s at most
                    out.append(C.SHIFT_BASE + min(MAX_SHIFT_STEPS, shift))
                    shift -= min(MAX_SHIFT_STEPS, shift)
                emitted_step = step
            emit(token)
    return [t + C.NUM_SPECIAL_TOKENS for t in out] + [C.EOS_ID]


def _redundant(token: int, program_state: int, velocity_state: int) -> bool:
    return token == program_state or token == velocity_state


@dataclass(frozen=True)
class Segment:
    """One 5.12 s model window."""

    index: int
    start: float  # seconds
    tokens: list[int]  # model token ids, EOS last, no padding; at most INPUT_LENGTH
    dropped_tokens: int = 0  # tokens beyond the model's window that were dropped
    dropped_from: float | None = None  # events from this time (s) on were dropped

    @property
    def end(self) -> float:
        return self.start + SEGMENT_SECONDS


def fit_segment(index: int, tokens: list[int], max_length: int = INPUT_LENGTH) -> Segment:
    """Bound a segment to the model's input length, keeping its earliest events.

    The notes encoder has `max_length` positions (2048, EOS included); the reference crashes beyond that.
    Here the earliest events are kept and the cut falls on an event boundary (after a pitch, drum or tie
    token), so no half event is left; `dropped_from` tells from which time events were lost.
    """
    start = index * SEGMENT_SECONDS
    if len(tokens) <= max_length:
        return Segment(index, start, tokens)
    keep = max_length - 1
    while keep > 0 and not _ends_event(tokens[keep - 1]):
        keep -= 1
    shift = 0
    for t in tokens[:keep]:
        if C.NUM_SPECIAL_TOKENS + C.SHIFT_BASE <= t <= C.NUM_SPECIAL_TOKENS + MAX_SHIFT_STEPS:
            shift = t - C.NUM_SPECIAL_TOKENS
    dropped_from = start + shift / STEPS_PER_SECOND
    return Segment(index, start, tokens[:keep] + [C.EOS_ID], len(tokens) - keep - 1, dropped_from)


def _ends_event(token: int) -> bool:
    raw = token - C.NUM_SPECIAL_TOKENS
    return C.PITCH_BASE <= raw <= _PITCH_LAST or raw == C.TIE or raw >= C.DRUM_BASE


def crop_notes(
    notes: list[Note], duration: float, start: float, length: float | None
) -> tuple[list[Note], float]:
    """The part of a song from `start` for `length` seconds (None: to the end), starting at time 0.

    Applied after the sustain pedal. Notes sounding into the window start at 0 and notes still sounding
    at its end are cut there; drum hits (onsets only) are kept only if they fall inside the window.
    Returns the cropped notes and the cropped song's duration.
    """
    if start < 0 or (length is not None and length <= 0):
        raise ValueError("the start must be >= 0 and the length > 0")
    stop = duration if length is None else min(duration, start + length)
    out = []
    for n in notes:
        if n.is_drum:
            keep = start <= n.start < stop
        else:
            keep = n.end > start and n.start < stop
        if keep:
            out.append(replace(n, start=max(n.start, start) - start, end=min(n.end, stop) - start))
    return out, max(0.0, stop - start)


@dataclass(frozen=True)
class PreparedSong:
    """A score ready for the model: its segments and how long the music in them lasts."""

    segments: list[Segment]
    duration: float  # seconds from the start of segment 0 to the end of the last note
    num_notes: int = 0  # notes the model receives (after the sustain pedal and any preview window)

    @property
    def rendered_duration(self) -> float:
        return len(self.segments) * SEGMENT_SECONDS

    @property
    def silent(self) -> bool:
        """No notes at all: every segment is a lone tie token and EOS."""
        return all(len(s.tokens) <= 2 for s in self.segments)


def prepare(
    score: Score,
    start: float = 0.0,
    length: float | None = None,
    max_length: int = INPUT_LENGTH,
    min_duration: float = 0.0,
) -> PreparedSong:
    """Sustain, instrument classes, an optional preview window (`start`, `length` in seconds) and segments.

    min_duration: the song lasts at least this long (seconds, before the window), as one track alone does
    when it is rendered as long as the whole song (spectrosynth.stems)."""
    notes, duration = model_notes(score)
    duration = max(duration, min_duration)
    if start or length is not None:
        if start > 0 and start >= duration:
            raise SpectrosynthError(
                f"{score.source}: --start {start:g} s is at or past the end of the song ({duration:.1f} s)"
            )
        notes, duration = crop_notes(notes, duration, start, length)
    segments = [fit_segment(i, t, max_length) for i, t in enumerate(tokenize_notes(notes, duration))]
    return PreparedSong(segments, duration, len(notes))


def tokenize(score: Score, max_length: int = INPUT_LENGTH) -> list[Segment]:
    """A score's model segments, each bounded to the model's input length (see `fit_segment`)."""
    return prepare(score, max_length=max_length).segments


def pad(tokens: list[int], length: int = INPUT_LENGTH) -> list[int]:
    """Right-pad token ids with PAD to the encoder's input length."""
    return tokens + [C.PAD_ID] * (length - len(tokens))
