"""The spectrogram inverter: the published `melgan/model.onnx`, a SoundStream-style GAN decoder,
on onnxruntime.

Input `input_features`: float32 (batch, frames, 128) natural-log mel; output float32 (batch, frames * 320) at
16 kHz. Runs on the CPU provider, or CUDA when onnxruntime-gpu is installed and a CUDA device is chosen.
A model without it renders with spectrosynth.griffin_lim instead (`load_vocoder`, `--vocoder griffin-lim`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spectrosynth.constants import HOP_LENGTH, NUM_MEL_BINS, VOCODERS
from spectrosynth.errors import SpectrosynthError

if TYPE_CHECKING:
    from spectrosynth.griffin_lim import GriffinLimVocoder

INPUT_NAME = "input_features"

#: Frames of spectrogram StreamingVocoder gives each chunk of the model's vocoder on either side (0.64 s).
#: SoundStream's decoder at the published file's size (spectrosynth.testing.write_soundstream_vocoder) makes
#: a frame's audio from the 20 frames before it (causal convolutions, as in the SoundStream paper) or the 10
#: on either side (non-causal); from 20 frames on, its streamed audio was measured equal to the whole
#: spectrogram's, bit for bit. The published file's layers are inferred from its size, not known: 32 leaves
#: 12 frames for a wider one (docs/performance.md, "The vocoder's cost"). 64 made the vocoder ~20 % slower.
MODEL_CONTEXT = 32
#: For a vocoder that does not say how much context it needs (no `context` attribute).
DEFAULT_CONTEXT = 64


class Vocoder:
    name = "model"  # constants.VOCODERS: the model's own inverter
    context = MODEL_CONTEXT  # frames StreamingVocoder adds on either side of a chunk

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:
            raise SpectrosynthError(
                f"{path}: the vocoder cannot be loaded ({str(e).splitlines()[0][:120]}); download it again"
            ) from e
        names = [i.name for i in self.session.get_inputs()]
        if INPUT_NAME not in names:
            raise SpectrosynthError(
                f"{path}: the vocoder has inputs {names}, not '{INPUT_NAME}'; is it the model's?"
            )
        self.providers = self.session.get_providers()

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """mel (frames, 128) or (batch, frames, 128) log-mel -> audio (frames * 320,) or (batch, samples)."""
        batched = mel.ndim == 3
        features = np.ascontiguousarray(mel if batched else mel[None], dtype=np.float32)
        if features.shape[-1] != NUM_MEL_BINS:
            raise ValueError(f"expected {NUM_MEL_BINS} mel bins, got {features.shape[-1]}")
        audio = self.session.run(None, {INPUT_NAME: features})[0].astype(np.float32, copy=False)
        audio = audio.reshape(features.shape[0], features.shape[1] * HOP_LENGTH)
        return audio if batched else audio[0]


def load_vocoder(kind: str, folder: str | Path, device: str = "cpu") -> Vocoder | GriffinLimVocoder:
    """The spectrogram inverter `kind` names (constants.VOCODERS) for the model in `folder`: "model", its
    melgan/model.onnx (a Vocoder), or "griffin-lim", which needs no file (griffin_lim.GriffinLimVocoder,
    much lower quality: for models trained without an inverter). Both are called the same way."""
    if kind == "model":
        return Vocoder(Path(folder) / "melgan" / "model.onnx", device=device)
    if kind == "griffin-lim":
        from spectrosynth.griffin_lim import GriffinLimVocoder

        return GriffinLimVocoder(device=device)
    raise SpectrosynthError(f"unknown vocoder {kind!r}; use {' or '.join(VOCODERS)}")


class StreamingVocoder:
    """Vocodes a spectrogram that arrives in pieces, with memory that does not grow with its length.

    Each chunk of frames is vocoded together with `context` frames on each side, and only its own samples
    are kept. The vocoder is convolutional: a sample depends only on nearby frames, so with a context at
    least its receptive field the result equals vocoding the whole spectrogram at once. The default is the
    vocoder's own `context`: for the model's (Vocoder) 32 frames, 0.64 s, where SoundStream's decoder reads
    20 (MODEL_CONTEXT); for Griffin-Lim 64; DEFAULT_CONTEXT (64) for a vocoder that has none. Audio for a
    chunk is released once `context` frames after it have arrived, or at `finish`.
    """

    def __init__(self, vocoder: Vocoder, chunk: int = 256, context: int | None = None):
        if context is None:
            context = getattr(vocoder, "context", DEFAULT_CONTEXT)
        if chunk <= 0 or context < 0:
            raise ValueError("chunk must be positive and context non-negative")
        self.vocoder, self.chunk, self.context = vocoder, chunk, context
        self._frames = np.zeros((0, NUM_MEL_BINS), np.float32)
        self._offset = 0  # absolute index of self._frames[0]
        self._done = 0  # frames whose audio has been released

    def feed(self, mel: np.ndarray) -> list[np.ndarray]:
        """Add frames (n, 128); returns the audio chunks that became final (possibly none)."""
        self._frames = np.concatenate([self._frames, np.asarray(mel, np.float32)])
        out = []
        while self._offset + len(self._frames) >= self._done + self.chunk + self.context:
            out.append(self._vocode(self._done + self.chunk))
        return out

    def finish(self) -> list[np.ndarray]:
        """The audio of every remaining frame."""
        end = self._offset + len(self._frames)
        return [self._vocode(end)] if end > self._done else []

    def _vocode(self, stop: int) -> np.ndarray:
        """Release the audio of frames [done, stop), vocoded with up to `context` frames either side."""
        first = max(0, self._done - self.context)
        last = min(self._offset + len(self._frames), stop + self.context)
        audio = self.vocoder(self._frames[first - self._offset : last - self._offset])
        start = (self._done - first) * HOP_LENGTH
        piece = audio[start : start + (stop - self._done) * HOP_LENGTH]
        self._done = stop
        keep_from = max(0, self._done - self.context)  # frames still needed as left context
        self._frames = self._frames[keep_from - self._offset :]
        self._offset = keep_from
        return piece
