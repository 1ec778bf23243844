"""How good a render sounds, measured: `spectrosynth evaluate` and its library (docs/quality.md).

Three scores, each defined in `spectrosynth.evaluation.metrics`:

- note F1: the notes Spotify's basic-pitch transcribes from the audio against the MIDI file's own notes,
  onsets within 50 ms and pitch within 50 cents (mir_eval), drums left out. Does it play the score?
- mel L1: the mean absolute difference of the model's log-mel spectrograms of the audio and of a reference
  recording of the same MIDI (natural-log units). Does it sound like the reference?
- seam: how much more the spectrum changes across the 5.12 s segment boundaries than elsewhere; 1.0 = no
  seam. Can one hear where the model's segments meet?

    from spectrosynth.evaluation import evaluate_file, evaluate_dirs, transcribe
    evaluate_file("waltzes1.mid", "waltzes1.flac")  # a soundfont render of the whole waltz
    # {"input": "waltzes1.mid", "audio": "waltzes1.flac", "note_f1": 0.859..., "precision": 0.774...,
    #  "recall": 0.965..., "seam": 0.994...}; with reference="recording.wav", also "mel_l1"

Needs the `evaluate` extra and basic-pitch, installed without its dependencies (which demand an old
TensorFlow): pip install "spectrosynth[evaluate]" && pip install --no-deps basic-pitch==0.4.0. Importing
this package does not import them; the first transcription does, and says so in one line when they are
missing.
"""

from __future__ import annotations

from spectrosynth.evaluation.metrics import (
    END_MARGIN,
    ONSET_TOLERANCE,
    PITCH_TOLERANCE,
    NoteScores,
    mel_l1,
    note_scores,
    reference_notes,
    seam_score,
    spectral_change,
)
from spectrosynth.evaluation.scoring import (
    AUDIO_SUFFIXES,
    evaluate_audio,
    evaluate_dirs,
    evaluate_file,
    find_audio,
    mean_scores,
    plan,
    require_dependencies,
)
from spectrosynth.evaluation.transcription import INSTALL, Transcriber, default_transcriber, transcribe

__all__ = [
    "AUDIO_SUFFIXES",
    "END_MARGIN",
    "INSTALL",
    "NoteScores",
    "ONSET_TOLERANCE",
    "PITCH_TOLERANCE",
    "Transcriber",
    "default_transcriber",
    "evaluate_audio",
    "evaluate_dirs",
    "evaluate_file",
    "find_audio",
    "mean_scores",
    "mel_l1",
    "note_scores",
    "plan",
    "reference_notes",
    "require_dependencies",
    "seam_score",
    "spectral_change",
    "transcribe",
]
