"""A score made ready for rendering, with what the user should be told about it.

Shared by `render` and `batch`: instrument changes, the preview window and the model's segments, and the
notices that go with them (what a remapped program becomes, a segment too dense for the model, a tail cut
short by the last segment, a song with nothing left to play).
"""

from __future__ import annotations

from spectrosynth.constants import SAMPLE_RATE
from spectrosynth.midi import Score
from spectrosynth.outputs import OutputSettings
from spectrosynth.remap import Remap, apply_remap
from spectrosynth.tokens import PreparedSong, prepare


def prepare_song(
    score: Score,
    remap: Remap,
    start: float = 0.0,
    duration: float | None = None,
    output: OutputSettings | None = None,
    label: str | None = None,
) -> tuple[PreparedSong, list[str]]:
    """Instrument changes, then the preview window and the model's segments; and the notices, each one
    line, prefixed with `label` when given."""
    score, notices = remap_score(score, remap, label)
    prefix = f"{label}: " if label else ""
    song = prepare(score, start=start, length=duration)
    if song.silent:
        notices.append(f"{prefix}no notes left to play: the output is silence")
    for s in song.segments:
        if s.dropped_tokens:
            notices.append(
                f"warning: {prefix}segment {s.index} ({s.start:.2f}-{s.end:.2f} s) is too dense for the "
                f"model (over 2048 tokens); its events from {s.dropped_from:.2f} s on are left out"
            )
    if output is not None:
        kept = output.samples(song) / SAMPLE_RATE - song.duration
        if output.trim and kept < output.tail - 1e-3:
            notices.append(
                f"{prefix}the last note ends {kept:.2f} s before the end of the last 5.12 s segment, so the "
                f"tail is {kept:.2f} s, not {output.tail:g} s"
            )
    return song, notices


def remap_score(score: Score, remap: Remap, label: str | None = None) -> tuple[Score, list[str]]:
    """The score as `remap` plays it, and the notices about that (prefixed with `label`)."""
    if remap.is_identity():
        return score, []
    score, remapped = apply_remap(score, remap)
    prefix = f"{label}: " if label else ""
    return score, [prefix + n for n in remapped]
