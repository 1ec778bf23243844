"""The windowed rendering pipeline and the Python API.

Data flow for a song of S segments (base model sizes):

    MIDI file --tokens.py--> S token lists (each <= 2048 ids)
    for each segment i, in order:
        notes encoder:   tokens (1, L)                -> (1, L, 768)
        context encoder: previous mel (1, 256, 128)   -> (1, 256, 768)   (segment 0: none, see below)
        decoder: 100 DDPM steps from noise (1, 256, 128), each predicting the noise from
                 x_t, the time t and cross-attention over the L (+ 256) encodings
        mel_i = x_0 scaled back to log-mel (1, 256, 128)  -> the next segment's context
    vocoder: all mels (1, 256 S, 128) -> audio (256 S * 320,) at 16 kHz

The reference gives the first segment an all-zero context whose every frame is masked out of the
decoder's cross-attention (weight exactly 0), so the context encoder is skipped there; the reference pads
notes to 2048 tokens and masks the padding (weight exactly 0), so the encoders run on the real tokens only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from spectrosynth import models, weights
from spectrosynth.constants import (
    FRAMES_PER_SEGMENT,
    MAX_LOG_MEL,
    MIN_LOG_MEL,
    NUM_MEL_BINS,
    SAMPLE_RATE,
)
from spectrosynth.errors import SpectrosynthError
from spectrosynth.sampling import DDPMSchedule, sample_ddpm
from spectrosynth.tokens import Segment
from spectrosynth.vocoder import Vocoder

if TYPE_CHECKING:
    from spectrosynth.remap import Remap

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPONENTS = ("notes_encoder", "continuous_encoder", "decoder")


def scale_features(log_mel: torch.Tensor) -> torch.Tensor:
    """Log-mel -> the decoder's [-1, 1] feature space (clipped to the log-mel range first)."""
    clipped = torch.clip(log_mel, MIN_LOG_MEL, MAX_LOG_MEL)
    return (clipped - MIN_LOG_MEL) / (MAX_LOG_MEL - MIN_LOG_MEL) * 2.0 - 1.0


def scale_to_log_mel(features: torch.Tensor) -> torch.Tensor:
    """[-1, 1] features -> log-mel in [ln(1e-5), 4]."""
    return (features + 1.0) / 2.0 * (MAX_LOG_MEL - MIN_LOG_MEL) + MIN_LOG_MEL


@dataclass(frozen=True)
class Progress:
    """Where a render is: `step` of `steps` diffusion steps done in segment `segment` of `segments`."""

    segment: int
    segments: int
    step: int
    steps: int

    @property
    def fraction(self) -> float:
        return (self.segment * self.steps + self.step) / max(1, self.segments * self.steps)


ProgressCallback = Callable[[Progress], None]


@dataclass
class Rendering:
    """A finished render."""

    audio: np.ndarray  # float32 mono at `sample_rate`
    mel: np.ndarray  # float32 (frames, 128) log-mel, 50 frames/s
    segments: list[Segment] = field(default_factory=list)
    sample_rate: int = SAMPLE_RATE


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SpectrosynthError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpectrosynthError("CUDA was asked for but no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpectrosynthError(
                f"there is no {device} (this machine has {torch.cuda.device_count()} CUDA devices)"
            )
    elif dev.type != "cpu":
        raise SpectrosynthError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 where the device computes it natively (recent CPUs, Ampere+ GPUs), else float32/16."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16
    if dtype not in DTYPES:
        raise SpectrosynthError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    if dtype == "float16" and device.type != "cuda":
        raise SpectrosynthError("float16 is for CUDA devices; on a CPU use --dtype bfloat16 or float32")
    return DTYPES[dtype]


class Synthesizer:
    """MIDI in, audio out. Load once with `from_pretrained`, then `render` as many songs as needed."""

    def __init__(
        self,
        notes_encoder: models.NotesEncoder,
        context_encoder: models.ContextEncoder,
        decoder: models.FilmDecoder,
        schedule: DDPMSchedule,
        vocoder: Vocoder | None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.device, self.dtype = torch.device(device), dtype
        self.notes_encoder = notes_encoder.to(self.device, dtype)
        self.context_encoder = context_encoder.to(self.device, dtype)
        self.decoder = decoder.to(self.device, dtype)
        self.schedule = schedule
        self.vocoder = vocoder

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = weights.DEFAULT_MODEL,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
        progress: bool = True,
    ) -> Synthesizer:
        """Load a model: a hub repo id (downloaded once into the Hugging Face cache) or a local folder in the
        published layout. device: auto, cpu, cuda, cuda:N; dtype: auto, float32, bfloat16, float16 (CUDA)."""
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        folder = weights.resolve_model(model, revision=revision, progress=progress)
        nets = {}
        for component in COMPONENTS:
            config = weights.read_config(folder, component)
            state = weights.read_state_dict(folder, component)
            weights.check_state_dict(state, weights.published_keys(component, config), component)
            nets[component] = models.build(component, config, state)
            del state
        try:
            schedule = DDPMSchedule.from_config(
                weights.read_config(folder, "scheduler", "scheduler_config.json")
            )
        except ValueError as e:
            raise SpectrosynthError(f"{folder / 'scheduler'}: {e}") from None
        vocoder = Vocoder(folder / "melgan" / "model.onnx", device=str(dev))
        return cls(
            nets["notes_encoder"],
            nets["continuous_encoder"],
            nets["decoder"],
            schedule,
            vocoder,
            dev,
            torch_dtype,
        )

    def iter_mel(
        self,
        segments: list[list[int]],
        steps: int = 100,
        seed: int = 0,
        generator: torch.Generator | None = None,
        callback: ProgressCallback | None = None,
    ) -> Iterator[np.ndarray]:
        """Token segments (unpadded) -> each segment's log-mel spectrogram (256, 128), float32, in order.

        The noise comes from a CPU generator seeded with `seed` (or the given `generator`), drawn in the
        reference's order: the starting noise of each segment, then one draw per step except the last.
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        shape = (1, FRAMES_PER_SEGMENT, NUM_MEL_BINS)

        def noise() -> torch.Tensor:
            return torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device)

        with torch.inference_mode():
            timesteps = self.schedule.timesteps(steps)
            # Per-step FiLM conditioning: depends on the step only, so computed once for the whole song.
            n = self.schedule.num_train_timesteps
            films = [self.decoder.conditioning(torch.tensor([t], device=self.device) / n) for t in timesteps]
        context = None
        for i, tokens in enumerate(segments):
            with torch.inference_mode():
                encodings = self.notes_encoder(torch.tensor([tokens], dtype=torch.long, device=self.device))
                if context is not None:
                    features = scale_features(context).to(self.dtype)
                    encodings = torch.cat([encodings, self.context_encoder(features)], 1)
                kvs = self.decoder.cross_keys_values(encodings)  # fixed for all steps of this segment

                def denoise(x: torch.Tensor, j: int, kvs=kvs) -> torch.Tensor:
                    return self.decoder(x.to(self.dtype), films[j], kvs)

                def report(j: int, i=i) -> None:
                    if callback is not None:
                        callback(Progress(i, len(segments), j + 1, steps))

                x = sample_ddpm(denoise, noise(), self.schedule, timesteps, noise, report)
                context = scale_to_log_mel(x)
                mel = context[0].float().cpu().numpy()
            yield mel

    def generate_mel(
        self,
        segments: list[list[int]],
        steps: int = 100,
        seed: int = 0,
        generator: torch.Generator | None = None,
        callback: ProgressCallback | None = None,
    ) -> np.ndarray:
        """All segments' log-mel spectrograms, concatenated: (256 * len(segments), 128) float32."""
        mels = list(self.iter_mel(segments, steps, seed, generator, callback))
        return np.concatenate(mels, axis=0) if mels else np.zeros((0, NUM_MEL_BINS), np.float32)

    def render(
        self,
        midi: str | os.PathLike | bytes,
        steps: int = 100,
        seed: int = 0,
        callback: ProgressCallback | None = None,
        *,
        remap: Remap | None = None,
        start: float = 0.0,
        length: float | None = None,
    ) -> Rendering:
        """Render a MIDI file (path or bytes) to 16 kHz mono audio and its log-mel spectrogram.

        remap: instrument changes (spectrosynth.remap.Remap); start/length: render only that part (seconds).
        The audio is whole segments long (a multiple of 5.12 s), as the model produces it.
        """
        from spectrosynth.midi import read_midi
        from spectrosynth.remap import apply_remap
        from spectrosynth.tokens import prepare

        if self.vocoder is None:
            raise SpectrosynthError("this synthesizer has no vocoder; use generate_mel for spectrograms only")
        score = read_midi(midi if isinstance(midi, bytes) else Path(midi))
        if remap is not None:
            score, _ = apply_remap(score, remap)
        song = prepare(score, start=start, length=length)
        mel = self.generate_mel([s.tokens for s in song.segments], steps=steps, seed=seed, callback=callback)
        return Rendering(self.vocoder(mel), mel, song.segments)
