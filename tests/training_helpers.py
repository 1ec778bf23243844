"""(MIDI, audio) pairs and small datasets for the dataset and training tests, without FluidSynth.

The audio is additive synthesis of the MIDI's notes (a decaying sine per note), so a pair is aligned by
construction and its spectrogram has the notes where the MIDI says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from midi_builder import Note, Song, Track

from spectrosynth.constants import SAMPLE_RATE


def melody(seconds: float, step: float = 0.25, base: int = 60, program: int = 0) -> Song:
    """A melody of `step`-second notes over `seconds` seconds, walking a scale."""
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    notes = [
        Note(base + scale[i % len(scale)], i * step, (i + 1) * step, velocity=90)
        for i in range(int(seconds / step))
    ]
    return Song([Track(notes, program=program)])


def synthesize(song: Song, seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.2) -> np.ndarray:
    """A decaying sine per note (float32 mono), `seconds` long."""
    audio = np.zeros(int(seconds * rate), np.float32)
    for track in song.tracks:
        for n in track.notes:
            start, end = int(n.start * rate), min(len(audio), int((n.end + 0.1) * rate))
            t = np.arange(end - start) / rate
            freq = 440.0 * 2 ** ((n.pitch - 69) / 12)
            audio[start:end] += amplitude * np.sin(2 * np.pi * freq * t) * np.exp(-3.0 * t)
    return audio


def write_pair(
    folder: Path,
    name: str,
    seconds: float = 6.0,
    tail: float = 0.5,
    suffix: str = ".wav",
    song: Song | None = None,
    audio: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """name.mid and name.<suffix> in `folder`: a melody of `seconds` and its synthesized audio."""
    song = song if song is not None else melody(seconds)
    path = folder / f"{name}.mid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(song.to_bytes())
    if audio is None:
        audio = synthesize(song, max(n.end for t in song.tracks for n in t.notes) + tail)
    audio_path = folder / f"{name}{suffix}"
    sf.write(audio_path, audio, SAMPLE_RATE)
    return path, audio_path


def ids_in_splits(holdout: float, train: int, validation: int, prefix: str = "song") -> list[str]:
    """Names whose split (by checksum, spectrosynth.data.split_of) gives `train` training songs and
    `validation` held-out ones at this holdout."""
    from spectrosynth.data import split_of

    picked = {"train": [], "validation": []}
    want = {"train": train, "validation": validation}
    i = 0
    while any(len(picked[k]) < want[k] for k in want):
        name = f"{prefix}{i:03d}"
        split = split_of(name, holdout)
        if len(picked[split]) < want[split]:
            picked[split].append(name)
        i += 1
    return picked["train"] + picked["validation"]
