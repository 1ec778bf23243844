"""The three scores of a render: note F1 against its MIDI, mel distance to a reference, seam score.

Every score works on plain arrays (notes as (N, 3) arrays of onset seconds, offset seconds and MIDI pitch;
spectrograms as the model's (frames, 128) natural-log mel from `spectrosynth.features.log_mel_spectrogram`),
so that they can be checked on made-up inputs; `spectrosynth.evaluation.scoring` reads the files.
docs/quality.md has the definitions and how they were validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from spectrosynth.constants import FRAMES_PER_SEGMENT, MIN_LOG_MEL, NUM_MEL_BINS, STEPS_PER_SECOND
from spectrosynth.midi import Score

if TYPE_CHECKING:
    from spectrosynth.remap import Remap

#: mir_eval's standard tolerances for note transcription (MIREX): onsets within 50 ms, pitch within 50 cents.
ONSET_TOLERANCE = 0.05  # seconds
PITCH_TOLERANCE = 50.0  # cents
#: Notes are scored when their onset lies at least this long before the end of the audio: a note struck in
#: the last 50 ms could not have been heard (basic-pitch needs its attack), so neither side counts it.
END_MARGIN = ONSET_TOLERANCE
#: The seam score compares spectra this many frames apart: frames k - 2 and k of the front end (40 ms
#: windows every 20 ms) abut at exactly 20 k ms, so neither overlaps a segment boundary there.
SEAM_LAG = 2


@dataclass(frozen=True)
class NoteScores:
    """Onset-only note precision, recall and F1 (None when there is no reference note to score against)."""

    precision: float | None
    recall: float | None
    f1: float | None
    reference: int  # reference notes scored (inside the audio)
    estimated: int  # transcribed notes scored
    matched: int


def reference_notes(score: Score, remap: Remap | None = None) -> np.ndarray:
    """The notes a render of `score` should play, as a (N, 3) array of (onset s, offset s, MIDI pitch).

    Drums are left out (a pitch transcriber does not hear drum kits as pitches). `remap` (a
    `spectrosynth.remap.Remap`, as given to `render`) is applied first, so muted tracks are left out too;
    programs do not matter here. The sustain pedal is not applied: it moves offsets, never onsets. Notes of
    the same pitch struck on the same 10 ms step of the model's event grid (a doubled part, or one note on
    two tracks) sound as one note and are counted once. Sorted by onset, then pitch.
    """
    if remap is not None and not remap.is_identity():
        from spectrosynth.remap import apply_remap

        score, _ = apply_remap(score, remap)
    seen: dict[tuple[int, int], tuple[float, float, int]] = {}
    for n in score.notes:
        if n.is_drum:
            continue
        key = (round(n.start * STEPS_PER_SECOND), n.pitch)
        if key not in seen or n.end > seen[key][1]:
            seen[key] = (n.start, n.end, n.pitch)
    notes = np.array(list(seen.values()), np.float64).reshape(-1, 3)
    return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def _scored(notes: np.ndarray, duration: float | None) -> np.ndarray:
    notes = np.asarray(notes, np.float64).reshape(-1, 3)
    if duration is not None:
        notes = notes[notes[:, 0] <= duration - END_MARGIN]
    return notes


def _intervals(notes: np.ndarray) -> np.ndarray:
    """Onset and offset for mir_eval, which wants times >= 0 and durations > 0 (offsets are not scored)."""
    onsets = np.maximum(notes[:, 0], 0.0)
    offsets = np.maximum(notes[:, 1], onsets + 1e-3)
    return np.stack([onsets, offsets], axis=1)


def note_scores(reference: np.ndarray, estimated: np.ndarray, duration: float | None = None) -> NoteScores:
    """Onset-only note precision, recall and F1 of `estimated` notes against `reference` notes.

    Both are (N, 3) arrays of (onset s, offset s, MIDI pitch). A reference note is found when an estimated
    note of the same pitch (within 50 cents) starts within 50 ms of it, each note matched at most once
    (mir_eval.transcription.precision_recall_f1_overlap with offset_ratio=None: offsets are not scored).
    With `duration` (the audio's length in seconds), only notes whose onset lies at least `END_MARGIN`
    before it count, on both sides: audio cut short is not blamed for notes it had no time to play.

    No reference note: every score is None (there is nothing to find). No estimated note: precision, recall
    and F1 are 0, as mir_eval has them.
    """
    ref, est = _scored(reference, duration), _scored(estimated, duration)
    if not len(ref):
        return NoteScores(None, None, None, 0, len(est), 0)
    if not len(est):
        return NoteScores(0.0, 0.0, 0.0, len(ref), 0, 0)
    import mir_eval

    from spectrosynth.evaluation.transcription import missing_dependency

    if not hasattr(mir_eval, "transcription"):
        raise missing_dependency("mir_eval >= 0.7")
    ref_intervals, est_intervals = _intervals(ref), _intervals(est)
    ref_hz, est_hz = _hz(ref[:, 2]), _hz(est[:, 2])
    precision, recall, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref_intervals, ref_hz, est_intervals, est_hz, onset_tolerance=ONSET_TOLERANCE,
        pitch_tolerance=PITCH_TOLERANCE, offset_ratio=None,
    )  # fmt: skip
    matched = round(recall * len(ref))
    return NoteScores(float(precision), float(recall), float(f1), len(ref), len(est), matched)


def _hz(pitch: np.ndarray) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(pitch, np.float64) - 69.0) / 12.0)


def _check_mel(mel: np.ndarray, what: str) -> np.ndarray:
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] != NUM_MEL_BINS:
        raise ValueError(
            f"{what} must be a (frames, {NUM_MEL_BINS}) log-mel spectrogram, not shape {mel.shape}"
        )
    return mel.astype(np.float64, copy=False)


def mel_l1(mel: np.ndarray, reference_mel: np.ndarray) -> float:
    """Mean absolute difference of two (frames, 128) log-mel spectrograms, in natural-log mel units.

    Frames are aligned from the start. The shorter spectrogram is padded at its end with the mel floor
    (ln 1e-5, `constants.MIN_LOG_MEL`, what silence gives): audio that stops early is scored as silence
    where the other still sounds, instead of having its missing part ignored. 0 for identical spectrograms;
    two empty ones give 0.
    """
    a, b = _check_mel(mel, "mel"), _check_mel(reference_mel, "reference_mel")
    frames = max(len(a), len(b))
    if not frames:
        return 0.0
    a = np.pad(a, ((0, frames - len(a)), (0, 0)), constant_values=MIN_LOG_MEL)
    b = np.pad(b, ((0, frames - len(b)), (0, 0)), constant_values=MIN_LOG_MEL)
    return float(np.mean(np.abs(a - b)))


def spectral_change(mel: np.ndarray, lag: int = SEAM_LAG) -> np.ndarray:
    """c[k] = mean over the 128 bins of |mel[k] - mel[k - lag]|, for k = lag .. frames - 1 (c[k] at index
    k - lag): how much the spectrum changes across the point 20 k ms (with lag 2, the abutting windows)."""
    mel = _check_mel(mel, "mel")
    return np.mean(np.abs(mel[lag:] - mel[:-lag]), axis=1) if len(mel) > lag else np.zeros(0)


def seam_score(mel: np.ndarray, segment_frames: int = FRAMES_PER_SEGMENT) -> float | None:
    """How much more the spectrum changes across the 5.12 s segment boundaries than elsewhere; 1.0 = no seam.

    The model renders each 256-frame segment separately; a seam is a jump of timbre or level where one
    segment meets the next. For a (frames, 128) log-mel spectrogram of the audio, the change across the
    point 20 k ms is c[k] = mean over the 128 bins of |mel[k] - mel[k - 2]|: the 40 ms windows of frames
    k - 2 and k abut there exactly, so each lies wholly inside one segment when k = 256 j. The score is
    the median of c over the boundaries k = 256 j (j >= 1, k < frames) divided by the median of c over
    every other k (k = 256 j - 1 and 256 j + 1 left out too, as their windows straddle the boundary).

    Medians on both sides, because c is skewed (a note onset changes the spectrum far more than a held
    note does): a boundary is a random place in the music, so for audio without seams the typical c there
    is the typical c anywhere, and the ratio of medians is about 1 (0.89 to 1.29 on whole soundfont
    renders, docs/quality.md), where the mean over the boundaries would be biased upwards (about 1.5) and
    swing with every onset that happens to fall on one. With one or two boundaries (audio under 15.36 s)
    the median is their mean: noisy.

    None when there is no boundary (audio of at most 256 frames, 5.12 s), or when the spectrum never
    changes away from the boundaries (silence).
    """
    mel = _check_mel(mel, "mel")
    if segment_frames <= SEAM_LAG + 1:
        raise ValueError(f"segment_frames must be more than {SEAM_LAG + 1}, not {segment_frames}")
    frames = len(mel)
    boundaries = np.arange(segment_frames, frames, segment_frames)
    if not len(boundaries) or frames <= SEAM_LAG:
        return None
    change = spectral_change(mel)  # change[i] is c[i + SEAM_LAG]
    k = np.arange(SEAM_LAG, frames)
    near = np.isin(k, boundaries) | np.isin(k, boundaries - 1) | np.isin(k, boundaries + 1)
    inside = change[~near]
    if not len(inside):
        return None
    typical = float(np.median(inside))
    if typical <= 0.0:
        return None
    return float(np.median(change[boundaries - SEAM_LAG])) / typical
