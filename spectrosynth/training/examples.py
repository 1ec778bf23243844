"""Training examples: 5.12 s chunks of a dataset's songs, each with its tokens, context and noise.

Every example is a pure function of the run's seed and its **global index** g (step k's examples are
k * batch .. (k + 1) * batch - 1, whatever the number of processes, micro-batches or restarts), so a run is
the same on 1 or N processes and a resumed run draws exactly what the uninterrupted one would have.

Example g (the original's `select_random_chunk_with_feature_context`, training-spec.md §2, except where
noted):
1. The song: an epoch is every training song repeated once per 5.12 s of its length (longer songs are drawn
   more often, as the original's 40 s pieces are), shuffled by (seed, epoch).
2. The target's first frame s, on the 20 ms grid: 0 with probability `start_rate` (a song's opening with
   no context at all, which is inference's first segment), otherwise uniform over 0 .. n - 2 (at least 2
   real frames of target, as the original).
3. The target: frames s .. s + 255 of the song's mel, silence past its end (the original pads with zero
   samples; the loss covers the padding too). The tokens: the notes of those frames
   (spectrosynth.tokens.NoteEvents.chunk_tokens), bounded to 2048 as inference bounds them.
4. The context: the L = min(s, 256) frames before s, the ground truth (teacher forcing), right-aligned with
   a mask (terminal-relative positions, see spectrosynth.models.ContextEncoder). Unlike the original, it
   never includes target frames (training-spec.md §2.8 and §6: its 16-frame leak is not reproduced).
5. The noise: t ~ U[0, 1), eps ~ N(0, I) (256, 128), and keep ~ Bernoulli(1 - cfg_dropout): a dropped
   example loses both conditions (tokens and context), for classifier-free guidance.

Validation examples are fixed: the held-out songs' segments on the 5.12 s grid (as inference cuts them),
round-robin over songs, with evenly spaced t and fixed noise, and no condition dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spectrosynth.constants import FRAMES_PER_SEGMENT, MIN_LOG_MEL, NUM_MEL_BINS
from spectrosynth.data.store import DatasetReader, SongRef
from spectrosynth.errors import SpectrosynthError
from spectrosynth.pipeline import scale_features
from spectrosynth.tokens import NoteEvents, fit_segment

_VALIDATION_STREAM = 1 << 40  # seeds validation noise apart from every training example's


@dataclass
class Example:
    """One training example, as numpy arrays."""

    tokens: np.ndarray  # (L,) int64, EOS last, no padding
    context: np.ndarray  # (256, 128) float32 in [-1, 1], right-aligned; -1 where masked
    context_mask: np.ndarray  # (256,) bool
    target: np.ndarray  # (256, 128) float32 in [-1, 1]
    t: float
    keep: bool
    eps: np.ndarray  # (256, 128) float32
    song: str = ""
    start: int = 0  # the target's first frame


@dataclass
class Batch:
    """Examples collated into tensors; tokens right-padded with 0 to the longest."""

    tokens: torch.Tensor  # (B, T) int64
    token_mask: torch.Tensor  # (B, T) bool
    context: torch.Tensor  # (B, 256, 128)
    context_mask: torch.Tensor  # (B, 256) bool
    target: torch.Tensor  # (B, 256, 128)
    t: torch.Tensor  # (B,) float32
    keep: torch.Tensor  # (B,) bool
    eps: torch.Tensor  # (B, 256, 128)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return self.tokens.shape[0]


def collate(examples: list[Example]) -> Batch:
    length = max(len(e.tokens) for e in examples)
    tokens = np.zeros((len(examples), length), np.int64)
    for i, e in enumerate(examples):
        tokens[i, : len(e.tokens)] = e.tokens
    tokens = torch.from_numpy(tokens)
    return Batch(
        tokens,
        tokens > 0,
        torch.from_numpy(np.stack([e.context for e in examples])),
        torch.from_numpy(np.stack([e.context_mask for e in examples])),
        torch.from_numpy(np.stack([e.target for e in examples])),
        torch.tensor([e.t for e in examples], dtype=torch.float32),
        torch.tensor([e.keep for e in examples], dtype=torch.bool),
        torch.from_numpy(np.stack([e.eps for e in examples])),
    )


class SongChunks:
    """Cuts chunks out of a dataset's songs (mel slices, context, tokens); song events cached."""

    def __init__(self, reader: DatasetReader):
        self.reader = reader
        self._events: dict[str, NoteEvents] = {}

    def example(self, ref: SongRef, start: int, t: float, keep: bool, eps: np.ndarray) -> Example:
        song = self.reader.load(ref)
        events = self._events.get(ref.id)
        if events is None:
            events = self._events[ref.id] = NoteEvents(song.notes, song.duration)
        tokens = fit_segment(0, events.chunk_tokens(start)).tokens
        mel = song.mel
        target = np.full((FRAMES_PER_SEGMENT, NUM_MEL_BINS), MIN_LOG_MEL, np.float32)
        part = mel[start : start + FRAMES_PER_SEGMENT]
        target[: len(part)] = part
        context = np.full((FRAMES_PER_SEGMENT, NUM_MEL_BINS), MIN_LOG_MEL, np.float32)
        length = min(start, FRAMES_PER_SEGMENT)
        if length:
            context[FRAMES_PER_SEGMENT - length :] = mel[start - length : start]
        mask = np.zeros(FRAMES_PER_SEGMENT, bool)
        mask[FRAMES_PER_SEGMENT - length :] = True
        return Example(
            np.asarray(tokens, np.int64),
            scale_features(context),
            mask,
            scale_features(target),
            float(t),
            bool(keep),
            eps,
            ref.id,
            start,
        )


class TrainingExamples(torch.utils.data.Dataset):
    """Example g of a run (see the module docstring): `examples[g]`."""

    def __init__(self, reader: DatasetReader, seed: int, cfg_dropout: float = 0.1, start_rate: float = 0.05):
        self.songs = reader.split("train")
        if not self.songs:
            raise SpectrosynthError(
                f"{reader.folder} has no training songs (all are held out); build it with a smaller --holdout"
            )
        self.chunks = SongChunks(reader)
        self.seed, self.cfg_dropout, self.start_rate = seed, cfg_dropout, start_rate
        slots = [math.ceil(s.num_frames / FRAMES_PER_SEGMENT) for s in self.songs]
        self.slot_song = np.repeat(np.arange(len(self.songs)), slots)
        self._epoch: tuple[int, np.ndarray] | None = None

    @property
    def epoch_length(self) -> int:
        return len(self.slot_song)

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 1])
            self._epoch = (epoch, rng.permutation(self.slot_song))
        return self._epoch[1]

    def __len__(self) -> int:  # unbounded in principle; the sampler says which indices are wanted
        return 1 << 62

    def __getitem__(self, g: int) -> Example:
        epoch, position = divmod(int(g), self.epoch_length)
        ref = self.songs[self._order(epoch)[position]]
        rng = np.random.default_rng([self.seed, int(g)])
        frames = ref.num_frames
        if rng.random() < self.start_rate:
            start = 0
        else:
            start = int(rng.integers(0, frames - 1))  # 0 .. n - 2
        t = rng.random(dtype=np.float32)
        keep = rng.random() >= self.cfg_dropout
        eps = rng.standard_normal((FRAMES_PER_SEGMENT, NUM_MEL_BINS), dtype=np.float32)
        return self.chunks.example(ref, start, t, keep, eps)


def validation_examples(reader: DatasetReader, count: int, seed: int) -> list[Example]:
    """The fixed validation set (see the module docstring); empty when no song is held out."""
    songs = reader.split("validation")
    if not songs or count <= 0:
        return []
    chunks = SongChunks(reader)
    segments = [math.ceil(s.num_frames / FRAMES_PER_SEGMENT) for s in songs]
    picks: list[tuple[SongRef, int]] = []
    j = 0
    while len(picks) < count and j < max(segments):
        picks += [(s, j) for s, n in zip(songs, segments, strict=True) if j < n][: count - len(picks)]
        j += 1
    out = []
    for i, (ref, segment) in enumerate(picks):
        rng = np.random.default_rng([seed, _VALIDATION_STREAM + i])
        eps = rng.standard_normal((FRAMES_PER_SEGMENT, NUM_MEL_BINS), dtype=np.float32)
        t = (i + 0.5) / len(picks)
        out.append(chunks.example(ref, segment * FRAMES_PER_SEGMENT, t, True, eps))
    return out
