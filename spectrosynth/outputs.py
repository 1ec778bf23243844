"""Writing a song's audio (and optionally its spectrogram) while it is being rendered.

Each segment's spectrogram goes to the streaming vocoder as soon as it is generated, and the audio to the
output file as soon as it is final, so memory does not grow with the song's length. Files are written to
temporaries next to their targets and moved into place only when the song is complete.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from spectrosynth.audio import AudioWriter, WriteSummary, atomic_file
from spectrosynth.constants import HOP_LENGTH, NUM_MEL_BINS, SAMPLE_RATE
from spectrosynth.tokens import PreparedSong
from spectrosynth.vocoder import StreamingVocoder, Vocoder


@dataclass(frozen=True)
class OutputSettings:
    """How audio is written (see docs/cli.md)."""

    fmt: str = "wav"
    bit_depth: int = 16
    sample_rate: int | None = None  # None: the model's 16 kHz
    gain_db: float = 0.0
    normalize: bool = False
    clip: str = "rescale"  # rescale, clamp or none
    tail: float = 1.0  # seconds kept after the last note
    trim: bool = True  # False: whole 5.12 s segments
    channels: int = 1  # 2: a stereo mix of the tracks rendered apart (spectrosynth.stems)
    loudness: float | None = None  # LUFS to normalise the integrated loudness to, under the peak ceiling

    def samples(self, song: PreparedSong) -> int:
        """How many 16 kHz samples of the rendered song are kept."""
        total = round(song.rendered_duration * SAMPLE_RATE)
        return min(total, round((song.duration + self.tail) * SAMPLE_RATE)) if self.trim else total


def audio_writer(path: str, settings: OutputSettings, force: bool = False, **level) -> AudioWriter:
    """An AudioWriter for `settings` (format, bit depth, rate, gain, clip policy; normalize and loudness
    unless `level` says otherwise: channels, normalize, loudness, deferred_level)."""
    level = {"normalize": settings.normalize, "loudness": settings.loudness, **level}
    return AudioWriter(path, settings.fmt, settings.bit_depth, settings.sample_rate, gain_db=settings.gain_db,
                       clip=settings.clip, force=force, **level)  # fmt: skip


class SongOutput:
    """Receives a song's segments in order and writes its audio file (and .npy spectrogram) progressively.

    Use as a context manager: on an exception (Ctrl-C included) nothing is left behind and existing files
    are untouched; `finish()` publishes the files.
    """

    def __init__(
        self,
        song: PreparedSong,
        vocoder: Vocoder,
        output: str,
        settings: OutputSettings,
        force: bool = False,
        mel_out: str | None = None,
    ):
        self.keep = settings.samples(song)
        self.mel_frames = -(-self.keep // HOP_LENGTH)
        self._written = self._mel_written = 0
        self._streamer = StreamingVocoder(vocoder)
        self._files = contextlib.ExitStack()
        self.writer = audio_writer(output, settings, force)
        self._files.callback(self.writer.abort)  # a no-op once the writer is closed
        self._npy = None
        if mel_out is not None:
            self._npy = self._files.enter_context(atomic_file(mel_out, force))
            header = {"descr": "<f4", "fortran_order": False, "shape": (self.mel_frames, NUM_MEL_BINS)}
            np.lib.format.write_array_header_1_0(self._npy, header)

    def __enter__(self) -> SongOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort(exc_type, exc, tb)

    def add(self, mel: np.ndarray) -> None:
        """The next segment's log-mel spectrogram (256, 128)."""
        if self._npy is not None:
            part = mel[: max(0, self.mel_frames - self._mel_written)]
            self._npy.write(np.ascontiguousarray(part, dtype="<f4").tobytes())
            self._mel_written += len(part)
        for audio in self._streamer.feed(mel):
            self._audio(audio)

    def drain(self) -> None:
        """Vocode what is left (once): after it, `writer` has the whole song."""
        if self._streamer is not None:
            for audio in self._streamer.finish():
                self._audio(audio)
            self._streamer = None

    def finish(self) -> WriteSummary:
        """Vocode what is left, then publish the audio file and the spectrogram."""
        self.drain()
        summary = self.writer.close()
        self._files.close()  # publishes the .npy (its atomic_file block ends without an error)
        return summary

    def abort(self, *exc_info) -> None:
        """Remove every temporary; targets are untouched."""
        self._files.__exit__(*(exc_info or (RuntimeError, RuntimeError("aborted"), None)))

    def _audio(self, audio: np.ndarray) -> None:
        take = min(len(audio), self.keep - self._written)
        if take > 0:
            self.writer.write(audio[:take])
            self._written += take
