"""Scoring files: one (MIDI, audio[, reference audio]) triple, or every MIDI file of a folder tree.

The audio of `song.mid` is `song.wav` (or .flac, .ogg, .mp3) at the same place under the audio folder, as
`spectrosynth batch` writes it; the reference audio likewise under the reference folder. The audio must
start where the MIDI file starts (a render without --start). Results are plain dicts, ready for JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spectrosynth.constants import SAMPLE_RATE
from spectrosynth.errors import SpectrosynthError
from spectrosynth.evaluation.metrics import mel_l1, note_scores, reference_notes, seam_score

if TYPE_CHECKING:
    from spectrosynth.evaluation.transcription import Transcriber
    from spectrosynth.midi import Score
    from spectrosynth.remap import Remap

#: Audio formats looked for beside a MIDI file's name, in order of preference when several exist.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
#: The scores of one file, in the order of the JSON output and the table.
SCORES = ("note_f1", "precision", "recall", "seam", "mel_l1")
#: The scores averaged over files.
MEAN_SCORES = ("note_f1", "mel_l1", "seam")

Progress = Callable[[str, "dict[str, Any] | None", "str | None"], None]


def require_dependencies() -> None:
    """Raise SpectrosynthError (saying what to install) unless basic-pitch and mir_eval can be used."""
    from spectrosynth.evaluation.transcription import default_transcriber, missing_dependency

    try:
        import mir_eval.transcription  # noqa: F401
    except ImportError as e:
        raise missing_dependency("mir_eval") from e
    default_transcriber()


def evaluate_audio(
    score: Score, audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
    reference_audio: np.ndarray | None = None, *, remap: Remap | None = None,
    transcriber: Transcriber | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The scores of mono float `audio` (at `sample_rate` Hz) as a render of `score` (a midi.Score).

    Returns {"note_f1", "precision", "recall", "seam"} and, with `reference_audio` (at the same rate),
    "mel_l1"; a score that is undefined for this audio (no reference note, no segment boundary) is None.
    `transcriber` defaults to the shared basic-pitch model; `remap` (a remap.Remap) mutes tracks as the
    render did.
    """
    from spectrosynth.evaluation.transcription import default_transcriber
    from spectrosynth.features import log_mel_spectrogram

    transcriber = transcriber or default_transcriber()
    duration = len(audio) / sample_rate
    notes = note_scores(reference_notes(score, remap), transcriber(audio, sample_rate), duration)
    mel = log_mel_spectrogram(audio, sample_rate)
    result: dict[str, Any] = {
        "note_f1": notes.f1,
        "precision": notes.precision,
        "recall": notes.recall,
        "seam": seam_score(mel),
    }
    if reference_audio is not None:
        result["mel_l1"] = mel_l1(mel, log_mel_spectrogram(reference_audio, sample_rate))
    return result


def evaluate_file(
    midi: str | os.PathLike, audio: str | os.PathLike, reference: str | os.PathLike | None = None,
    *, remap: Remap | None = None, transcriber: Transcriber | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Score one render: {"input", "audio", "note_f1", "precision", "recall", "seam"} (+ "mel_l1" with a
    reference audio file). Files are read with spectrosynth's own readers (any audio is taken as 16 kHz
    mono); an unreadable file raises SpectrosynthError with a one-line message naming it."""
    from spectrosynth.features import load_audio
    from spectrosynth.midi import read_midi

    score = read_midi(Path(midi))
    samples = load_audio(audio)
    reference_samples = load_audio(reference) if reference is not None else None
    for path, x in ((audio, samples), (reference, reference_samples)):
        if x is not None and not np.isfinite(x).all():
            raise SpectrosynthError(f"{path}: the audio holds NaN or infinite samples; render it again")
    scores = evaluate_audio(score, samples, SAMPLE_RATE, reference_samples, remap=remap,
                            transcriber=transcriber)  # fmt: skip
    return {"input": str(midi), "audio": str(audio), **scores}


@dataclass(frozen=True)
class Job:
    """One MIDI file to score, its audio and reference (None: not found, `missing` says why)."""

    label: str  # the MIDI file's path relative to the MIDI folder (its name for a single file)
    midi: Path
    audio: Path | None
    reference: Path | None
    missing: str | None = None


def find_audio(folder: Path, stem: str) -> Path | None:
    """`folder/stem` + the first of AUDIO_SUFFIXES (lower or upper case) that exists, else None."""
    for suffix in AUDIO_SUFFIXES:
        for candidate in (suffix, suffix.upper()):
            path = folder / (stem + candidate)
            if path.is_file():
                return path
    return None


def plan(midi: Path, audio: Path, reference: Path | None = None) -> list[Job]:
    """The files to score: MIDI_DIR AUDIO_DIR [REF_DIR] (every .mid/.midi below MIDI_DIR, the audio of the
    same relative path and name), or MIDI_FILE AUDIO_FILE|AUDIO_DIR [REF_FILE|REF_DIR]. Raises
    SpectrosynthError for a path that does not exist, a folder of MIDI files against an audio file, or a
    folder without MIDI files."""
    from spectrosynth.batch.jobs import find_midi_files

    for path, what in ((midi, "MIDI"), (audio, "audio"), (reference, "reference audio")):
        if path is not None and not path.exists():
            raise SpectrosynthError(f"{path}: no such file or folder; give the {what} folder or file")
    if midi.is_dir():
        for path, what in ((audio, "audio"), (reference, "reference")):
            if path is not None and not path.is_dir():
                raise SpectrosynthError(
                    f"{path}: is a file, but {midi} is a folder; give the {what} folder that mirrors it"
                )
        rels = find_midi_files(midi)
        if not rels:
            raise SpectrosynthError(f"no MIDI files (.mid, .midi) in {midi}; give the folder that holds them")
    else:
        rels = [midi.name]
    jobs = []
    for rel in rels:
        path = midi / rel if midi.is_dir() else midi
        stem = rel.rsplit(".", 1)[0] if "." in rel else rel
        audio_path = find_audio(audio, stem) if audio.is_dir() else audio
        reference_path = None
        if reference is not None:
            reference_path = find_audio(reference, stem) if reference.is_dir() else reference
        missing = None
        if audio_path is None:
            missing = f"no audio for it in {audio} ({stem}.wav/.flac/.ogg/.mp3); render it there first"
        elif reference is not None and reference_path is None:
            missing = f"no reference audio for it in {reference} ({stem}.wav/.flac/.ogg/.mp3); add it there"
        jobs.append(Job(rel, path, audio_path, reference_path, missing))
    return jobs


def mean_scores(files: list[dict[str, Any]], with_reference: bool) -> dict[str, float | None]:
    """The mean of each of MEAN_SCORES over the files where it is defined (None where it never is)."""
    means: dict[str, float | None] = {}
    for key in MEAN_SCORES:
        if key == "mel_l1" and not with_reference:
            continue
        values = [f[key] for f in files if f.get(key) is not None and math.isfinite(f[key])]
        means[key] = float(np.mean(values)) if values else None
    return means


def evaluate_dirs(
    midi: str | os.PathLike, audio: str | os.PathLike, reference: str | os.PathLike | None = None,
    *, remap: Remap | None = None, progress: Progress | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Score every MIDI file below `midi` against its audio below `audio` (and `reference`); see `plan`.

    Returns {"files": [evaluate_file's dict per file scored], "mean": {"note_f1", "seam"[, "mel_l1"]},
    "failed": [{"input", "error"}]}: a file whose audio is missing or that cannot be read is listed in
    "failed" with a one-line message naming it, and the others are still scored. `progress(label, result,
    error)` is called after each file (and `progress.planned(count)` first, when it has that method).
    Raises SpectrosynthError when nothing can be scored at all (no MIDI files, a missing folder, the
    transcriber not installed).
    """
    jobs = plan(Path(midi), Path(audio), None if reference is None else Path(reference))
    require_dependencies()  # before any file: a missing package is one error, not one per file
    planned = getattr(progress, "planned", None)
    if planned is not None:
        planned(len(jobs))
    files, failed = [], []
    for job in jobs:
        result = error = None
        if job.missing is not None:
            error = f"{job.midi}: {job.missing}"
        else:
            try:
                result = evaluate_file(job.midi, job.audio, job.reference, remap=remap)
            except SpectrosynthError as e:
                error = str(e) if str(job.midi) in str(e) or str(job.audio) in str(e) else f"{job.midi}: {e}"
        if error is None:
            files.append(result)
        else:
            failed.append({"input": str(job.midi), "error": error})
        if progress is not None:
            progress(job.label, result, error)
    return {"files": files, "mean": mean_scores(files, reference is not None), "failed": failed}
