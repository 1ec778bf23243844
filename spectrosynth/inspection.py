"""What `spectrosynth inspect` reports about a MIDI file, as plain data (the CLI formats it).

The JSON form is a stable format for scripts; its fields are documented in docs/inspect.md. Fields are
only ever added, never renamed or removed, within a schema version.
"""

from __future__ import annotations

from typing import Any

from spectrosynth.constants import INPUT_LENGTH, SEGMENT_SECONDS
from spectrosynth.instruments import class_name, program_name, program_to_class
from spectrosynth.midi import Score
from spectrosynth.remap import Remap, apply_remap
from spectrosynth.tokens import prepare

SCHEMA = "spectrosynth.inspect/1"


def inspect_score(score: Score, include_tokens: bool = False, remap: Remap | None = None) -> dict[str, Any]:
    """A JSON-ready report: duration, tracks and the instrument class each renders as, segments, tokens.

    With `remap`, the report shows the song as it will be rendered with those instrument changes.
    """
    notices: list[str] = []
    if remap is not None and not remap.is_identity():
        score, notices = apply_remap(score, remap)
    song = prepare(score)
    segments = song.segments
    from spectrosynth.stems import automation, stem_name

    moves = [automation(score, t.index) for t in score.tracks]
    placements = [m.initial for m in moves]  # the values at the first note
    raw_lengths = [len(s.tokens) + s.dropped_tokens for s in segments]  # before any cut
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "file": score.source,
        "duration": round(song.duration, 6),
        "notes": song.num_notes,
        "segments": len(segments),
        "segment_seconds": SEGMENT_SECONDS,
        "rendered_duration": round(len(segments) * SEGMENT_SECONDS, 6),
        "longest_segment_tokens": max(raw_lengths, default=0),
        "max_segment_tokens": INPUT_LENGTH,
        "overflowing_segments": [
            {
                "index": s.index,
                "start": round(s.start, 6),
                "end": round(s.end, 6),
                "tokens": raw_lengths[s.index],
                "dropped_tokens": s.dropped_tokens,
                "dropped_from": round(s.dropped_from, 6),
            }
            for s in segments
            if s.dropped_tokens
        ],
        "tracks": [
            {
                "track": t.index + 1,
                "name": t.name,
                "channel": None if t.channel is None else t.channel + 1,
                "program": t.program,
                "program_name": "Drums" if t.is_drum else program_name(t.program),
                "is_drum": t.is_drum,
                "notes": t.num_notes,
                "model_class": None if t.is_drum else program_to_class(t.program),
                "model_class_name": class_name(t.program, t.is_drum),
                "muted": getattr(t, "muted", False),
                "source_program": getattr(t, "source_program", None)
                if getattr(t, "remapped", False)
                else None,
                "pan": placements[t.index].pan,
                "volume": placements[t.index].volume,
                "expression": placements[t.index].expression,
                "pan_automated": moves[t.index].pan_automated,
                "level_automated": moves[t.index].level_automated,
                "automation_events": moves[t.index].events,
                "stem": stem_name(score, t.index),
            }
            for t in score.tracks
        ],
        "notices": notices,
    }
    if include_tokens:
        report["tokens"] = [s.tokens for s in segments]
    return report
