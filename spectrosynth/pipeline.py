"""The windowed rendering pipeline and the Python API.

Data flow for a song of S segments (base model sizes):

    MIDI file --tokens.py--> S token lists (each <= 2048 ids)
    for each segment i, in order:
        notes encoder:   tokens (1, L)                -> (1, L, 768)
        context encoder: previous mel (1, 256, 128)   -> (1, 256, 768)   (segment 0: none, see below)
        sampler: from noise (1, 256, 128), `steps` evaluations of the decoder (20 by default), each
                 predicting the noise from x_t, the time t and cross-attention over the L (+ 256)
                 encodings; with guidance, also without them (batched as (2, 256, 128))
        mel_i = x_0 scaled back to log-mel (1, 256, 128)  -> the next segment's context
    vocoder: all mels (1, 256 S, 128) -> audio (256 S * 320,) at 16 kHz

The reference gives the first segment an all-zero context whose every frame is masked out of the
decoder's cross-attention (weight exactly 0), so the context encoder is skipped there; the reference pads
notes to 2048 tokens and masks the padding (weight exactly 0), so the encoders run on the real tokens only.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from spectrosynth import converted, models, weights
from spectrosynth.constants import (
    DEFAULT_VOCODER,
    FRAMES_PER_SEGMENT,
    MAX_LOG_MEL,
    MIN_LOG_MEL,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    VOCODERS,
)
from spectrosynth.errors import SpectrosynthError
from spectrosynth.precision import auto_cpu_precision, cuda_bfloat16_is_native, quantize_int8
from spectrosynth.sampling import (
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    SAMPLERS,
    DDPMSchedule,
    Denoiser,
    GuidanceInterval,
    Sampler,
    as_interval,
    guided_denoiser,
    randn,
)
from spectrosynth.tokens import Segment
from spectrosynth.vocoder import StreamingVocoder, Vocoder, load_vocoder

if TYPE_CHECKING:
    from spectrosynth.remap import Remap
    from spectrosynth.segment_cache import CacheUse, SegmentCache

# Precisions by name -> the torch dtype the networks compute in (int8's quantized products take float32).
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int8": torch.float32,
}
PRECISIONS = tuple(DTYPES)
COMPONENTS = ("notes_encoder", "continuous_encoder", "decoder")
IntervalLike = GuidanceInterval | str | tuple[float, float] | None


def scale_features(log_mel):
    """Log-mel -> the decoder's [-1, 1] feature space (clipped to the log-mel range first). A torch tensor or
    a numpy array (training examples are made in numpy), returned as the same kind and dtype."""
    clipped = log_mel.clip(MIN_LOG_MEL, MAX_LOG_MEL)
    return (clipped - MIN_LOG_MEL) / (MAX_LOG_MEL - MIN_LOG_MEL) * 2.0 - 1.0


def scale_to_log_mel(features: torch.Tensor) -> torch.Tensor:
    """[-1, 1] features -> log-mel in [ln(1e-5), 4]."""
    return (features + 1.0) / 2.0 * (MAX_LOG_MEL - MIN_LOG_MEL) + MIN_LOG_MEL


@dataclass(frozen=True)
class Progress:
    """Where a render is: `step` of `steps` diffusion steps done in segment `segment` of `segments`.
    `cached`: this advance came from the segment cache (spectrosynth.segment_cache), not from sampling, so
    it says nothing about the sampling speed."""

    segment: int
    segments: int
    step: int
    steps: int
    cached: bool = False

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


def resolve_precision(dtype: str, device: torch.device) -> str:
    """The precision a render computes in: 'auto' made concrete for the device, the others checked.

    auto: CUDA: bfloat16 where supported (Ampere and newer), else float16. A CPU: bfloat16 where its matrix
    products were measured clearly faster than float32 (AMX; AVX512-BF16 on AMD Zen 5), else float32:
    measured once per machine and kept, or SPECTROSYNTH_CPU_DTYPE (spectrosynth.precision). int8: the
    decoder's linear layers dynamically quantized, the rest float32; CPU only. The cost in accuracy of each
    is measured in docs/performance.md and docs/quality.md.
    """
    if dtype == "auto":
        if device.type == "cuda":
            return "bfloat16" if cuda_bfloat16_is_native() else "float16"
        return auto_cpu_precision()
    if dtype not in PRECISIONS:
        raise SpectrosynthError(f"unknown dtype {dtype!r}; use auto, {', '.join(PRECISIONS)}")
    if dtype == "float16" and device.type != "cuda":
        raise SpectrosynthError("float16 is for CUDA devices; on a CPU use --dtype bfloat16, int8 or float32")
    if dtype == "int8" and device.type != "cpu":
        raise SpectrosynthError("int8 is for CPUs; on CUDA use --dtype bfloat16 or float16")
    return dtype


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype the networks compute in (float32 for int8, whose quantized products take and give
    float32)."""
    return DTYPES[resolve_precision(dtype, device)]


def resolve_sampler(
    name: str, steps: int | None, guidance: float, schedule: DDPMSchedule | None = None
) -> tuple[Sampler, int]:
    """The sampler called `name` and its step count (its default when None), with the options checked.

    schedule: the checkpoint's discrete schedule, for the `diffusers` sampler (default: the published one).
    """
    if name not in SAMPLERS:
        raise SpectrosynthError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
    steps = DEFAULT_STEPS[name] if steps is None else steps
    if steps < 1:
        raise SpectrosynthError(f"steps must be at least 1, not {steps}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise SpectrosynthError(f"guidance must be a number >= 0 (1 = none, 2 = default), not {guidance}")
    if name != "diffusers":
        return SAMPLERS[name], steps
    schedule = schedule or DDPMSchedule.published()
    if steps > schedule.num_train_timesteps:
        raise SpectrosynthError(
            f"the diffusers sampler takes at most {schedule.num_train_timesteps} steps, not {steps}; "
            "use another sampler for more"
        )
    return functools.partial(SAMPLERS[name], schedule=schedule), steps


@dataclass
class SegmentRow:
    """One segment to sample: its tokens, the previous segment's log-mel (256, 128) or None for a song's
    first, and the song's noise generator."""

    tokens: list[int]
    context: np.ndarray | None
    generator: torch.Generator


class FilmCache:
    """The decoder's FiLM conditioning for each time t a sampler asks for, computed once per t."""

    def __init__(self, decoder: models.FilmDecoder, device: torch.device):
        self.decoder, self.device, self.films = decoder, device, {}

    def __call__(self, t: float):
        if t not in self.films:
            noise_time = torch.tensor([t], dtype=torch.float32, device=self.device)
            self.films[t] = self.decoder.conditioning(noise_time)
        return self.films[t]


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
        int8: bool = False,
    ):
        """int8: quantize the decoder's linear layers (CPU; dtype float32), see spectrosynth.precision."""
        self.device, self.dtype = torch.device(device), dtype
        if int8 and (self.device.type != "cpu" or dtype != torch.float32):
            raise SpectrosynthError("int8 is for CPUs, with float32 elsewhere; use --device cpu")
        self.notes_encoder = notes_encoder.to(self.device, dtype)
        self.context_encoder = context_encoder.to(self.device, dtype)
        self.decoder = decoder.to(self.device, dtype)
        # Merging projections copies their weights. Worth it when the weights were copied anyway (another
        # precision or device); float32 on the CPU keeps the memory-mapped file as the only copy instead
        # (merging would hold both, and gains little there).
        if dtype != torch.float32 or self.device.type != "cpu":
            for net in (self.notes_encoder, self.context_encoder, self.decoder):
                net.fuse_projections()
        if int8:
            self.decoder.fuse_projections()  # fewer, larger products; quantizing copies the weights anyway
            quantize_int8(self.decoder)
        self.precision = "int8" if int8 else str(dtype).removeprefix("torch.")
        self.schedule = schedule
        self.vocoder = vocoder
        # What names the model's files (converted.model_fingerprint), set by from_pretrained: the segment
        # cache keys on it, and keeps nothing for a Synthesizer made from networks directly (None).
        self.model_fingerprint: dict | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = weights.DEFAULT_MODEL,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = True,
        vocoder: str = DEFAULT_VOCODER,
    ) -> Synthesizer:
        """Load a model: a hub repo id (downloaded once into the Hugging Face cache) or a local folder in the
        published layout. device: auto, cpu, cuda, cuda:N; dtype: auto (the fastest the device runs
        natively), float32 (bit for bit the reference's results), bfloat16, float16 (CUDA), int8 (CPU).
        vocoder: "model" (the model's melgan/model.onnx) or "griffin-lim" (spectrosynth.griffin_lim: needs no
        file, for a model trained without one; much lower quality)."""
        if vocoder not in VOCODERS:
            raise SpectrosynthError(f"unknown vocoder {vocoder!r}; use {' or '.join(VOCODERS)}")
        dev = resolve_device(device)
        precision = resolve_precision(dtype, dev)
        needs_file = vocoder == "model"  # griffin-lim renders a model folder without melgan/model.onnx
        folder = weights.resolve_model(model, revision=revision, progress=progress, vocoder=needs_file)
        # A converted copy made by an earlier load in this precision (spectrosynth.converted), memory-mapped.
        nets = (converted.load(folder, precision) if dev.type == "cpu" else None) or {}
        fresh = not nets
        for component in COMPONENTS:
            if component not in nets:
                config, state = weights.read_checked_state_dict(folder, component)
                nets[component] = models.build(component, config, state)
                del state
        try:
            schedule = DDPMSchedule.from_config(
                weights.read_config(folder, "scheduler", "scheduler_config.json")
            )
        except ValueError as e:
            raise SpectrosynthError(f"{folder / 'scheduler'}: {e}") from None
        inverter = load_vocoder(vocoder, folder, device=str(dev))
        synth = cls(
            nets["notes_encoder"],
            nets["continuous_encoder"],
            nets["decoder"],
            schedule,
            inverter,
            dev,
            DTYPES[precision],
            int8=precision == "int8",
        )
        if fresh and dev.type == "cpu":
            held = {"notes_encoder": synth.notes_encoder, "continuous_encoder": synth.context_encoder}
            converted.save(folder, precision, {**held, "decoder": synth.decoder})
        synth.model_fingerprint = converted.model_fingerprint(folder)
        return synth

    def sampler(self, name: str, steps: int | None, guidance: float) -> tuple[Sampler, int]:
        """The sampler called `name` and its step count (its default when None), checked: one-line errors."""
        return resolve_sampler(name, steps, guidance, self.schedule)

    def iter_mel(
        self,
        segments: list[list[int]],
        steps: int | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
        callback: ProgressCallback | None = None,
        *,
        sampler: str = DEFAULT_SAMPLER,
        guidance: float = DEFAULT_GUIDANCE,
        guidance_interval: IntervalLike = None,
        cache: SegmentCache | None = None,
    ) -> Iterator[np.ndarray]:
        """Token segments (unpadded) -> each segment's log-mel spectrogram (256, 128), float32, in order.

        sampler: a name in spectrosynth.sampling.SAMPLERS; steps: its network evaluations per segment (None:
        the sampler's default, 20 for unipc); guidance: the classifier-free guidance weight (1: none, one
        decoder pass per step; otherwise two); guidance_interval: guide only the steps whose log-SNR lies in
        [lo, hi] ('LO,HI', (lo, hi) or a GuidanceInterval; None: every step), one pass for the others. The
        noise comes from a CPU generator seeded with `seed` (or the given `generator`): the starting noise of
        each segment, then one draw per step that adds noise. cache: a SegmentCache to take segments from
        and keep them in (see iter_parts): the same spectrograms, fewer sampled.
        """
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        for mels in self.iter_parts(
            [segments], steps, generators=[gen], callback=callback, sampler=sampler, guidance=guidance,
            guidance_interval=guidance_interval, cache=cache,
        ):  # fmt: skip
            yield mels[0]

    def iter_parts(
        self,
        parts: list[list[list[int]]],
        steps: int | None = None,
        seed: int = 0,
        generators: list[torch.Generator] | None = None,
        callback: ProgressCallback | None = None,
        *,
        sampler: str = DEFAULT_SAMPLER,
        guidance: float = DEFAULT_GUIDANCE,
        guidance_interval: IntervalLike = None,
        sampler_options: dict | None = None,
        cache: SegmentCache | None = None,
        use: CacheUse | None = None,
    ) -> Iterator[list[np.ndarray]]:
        """The parts of one song (its token segments, and those of each track alone: as many segments each),
        segment by segment: yields segment k's log-mel (256, 128) of every part, in `parts` order.

        Each part is sampled alone, in its own call, never as a row of a batch beside the other parts:
        batched matrix products round differently from single rows, so what a part gets must not depend on
        which other parts are sampled with it, or which of them the cache had. A part alone is thus exactly
        what a render of it alone gives. Each part draws its noise from its own generator (`generators`, or
        one seeded with `seed` each).

        cache: a SegmentCache (spectrosynth.segment_cache). A segment whose key (the model, precision,
        device, sampler settings, the generator's starting state and the tokens of the part's segments up
        to it) is there is taken from it, with the generator's state after it; the others are sampled and
        kept. The result is the same bytes as without the cache. `use` (a CacheUse) is filled with which
        segments came from the cache. Progress: step counts every part's steps in the segment (steps x
        parts), a cached part's at once (`Progress.cached`).
        """
        from spectrosynth.segment_cache import CacheUse, chain_keys, render_identity

        _, steps = self.sampler(sampler, steps, guidance)
        if generators is None:
            generators = [torch.Generator().manual_seed(seed) for _ in parts]
        if len(generators) != len(parts):
            raise ValueError("one generator per part")
        total = len(parts[0]) if parts else 0
        if any(len(p) != total for p in parts):
            raise ValueError("every part of a song has as many segments")
        options = {"sampler": sampler, "steps": steps, "guidance": guidance,
                   "guidance_interval": guidance_interval, "sampler_options": sampler_options}  # fmt: skip
        identity = None
        if cache is not None:
            identity = render_identity(self, **options)
        keys = [None] * len(parts)
        if identity is not None:
            starts = [g.get_state().numpy().tobytes() for g in generators]
            keys = [chain_keys(identity, s, p) for s, p in zip(starts, parts, strict=True)]
        use = use if use is not None else CacheUse()
        use.reused = [[] for _ in parts]
        films = FilmCache(self.decoder, self.device)  # the same for every segment and part: computed once
        contexts: list[np.ndarray | None] = [None] * len(parts)
        work = steps * len(parts)
        for k in range(total):
            mels = []
            for b, part in enumerate(parts):
                done = b * steps
                entry = cache.get(keys[b][k]) if keys[b] is not None else None
                if entry is not None:
                    mel, state = entry
                    generators[b].set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
                    if callback is not None:
                        callback(Progress(k, total, done + steps, work, cached=True))
                else:

                    def report(j: int, k=k, done=done) -> None:
                        if callback is not None:
                            callback(Progress(k, total, done + j + 1, work))

                    row = SegmentRow(part[k], contexts[b], generators[b])
                    [mel] = self.sample_segments([row], callback=report, films=films, **options)
                    if keys[b] is not None:
                        cache.put(keys[b][k], mel, generators[b].get_state())
                use.reused[b].append(entry is not None)
                contexts[b] = mel
                mels.append(mel)
            yield mels
        if cache is not None and not all(all(r) for r in use.reused):
            cache.settle()  # other processes may have written meanwhile: the bound, counted afresh

    def iter_mel_batch(
        self,
        songs: list[list[list[int]]],
        steps: int | None = None,
        seeds: list[int] | None = None,
        generators: list[torch.Generator] | None = None,
        callback: ProgressCallback | None = None,
        *,
        sampler: str = DEFAULT_SAMPLER,
        guidance: float = DEFAULT_GUIDANCE,
        guidance_interval: IntervalLike = None,
        sampler_options: dict | None = None,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Several songs at once: segment k of every song that has one goes through the model together.

        Segments of one song stay in order (each is conditioned on the one before); stacking songs keeps a
        GPU busy. Each song draws its noise from its own generator (seeds[i], default 0), so it renders as it
        would alone, up to floating-point rounding (batched matrix products may round differently).
        Yields (song index, segment index, log-mel (256, 128)) as segments finish. sampler_options: keyword
        arguments of the sampler itself (the continuous solvers' clip, threshold, grid, t_start, t_end).
        """
        _, steps = self.sampler(sampler, steps, guidance)
        if generators is None:
            generators = [torch.Generator().manual_seed(s) for s in (seeds or [0] * len(songs))]
        if len(generators) != len(songs):
            raise ValueError("one seed or generator per song")
        films = FilmCache(self.decoder, self.device)  # the same for every segment and song: computed once
        contexts: dict[int, np.ndarray] = {}  # song -> its previous segment's log-mel (256, 128)
        total = max((len(s) for s in songs), default=0)
        for k in range(total):
            active = [b for b, song in enumerate(songs) if k < len(song)]

            def report(j: int, k=k) -> None:
                if callback is not None:
                    callback(Progress(k, total, j + 1, steps))

            rows = [SegmentRow(songs[b][k], contexts.get(b), generators[b]) for b in active]
            options = {"sampler": sampler, "steps": steps, "guidance": guidance, "films": films,
                       "guidance_interval": guidance_interval,
                       "sampler_options": sampler_options}  # fmt: skip
            mels = self.sample_segments(rows, callback=report, **options)
            for mel, b in zip(mels, active, strict=True):
                contexts[b] = mel
                yield b, k, mel

    def sample_segments(
        self,
        rows: list[SegmentRow],
        *,
        sampler: str = DEFAULT_SAMPLER,
        steps: int | None = None,
        guidance: float = DEFAULT_GUIDANCE,
        guidance_interval: IntervalLike = None,
        callback: Callable[[int], None] | None = None,
        films: FilmCache | None = None,
        sampler_options: dict | None = None,
    ) -> list[np.ndarray]:
        """One segment of each row, sampled together: each row's log-mel spectrogram (256, 128), float32.

        Rows may be at different places in their songs: a first segment (no context) and later ones (with
        the previous segment's log-mel) go through the model together. Each row draws its noise from its
        own generator, so it gets what it would alone, up to rounding. callback(i): after step i.
        """
        sample, steps = self.sampler(sampler, steps, guidance)
        films = films or FilmCache(self.decoder, self.device)
        streams = [row.generator for row in rows]
        with torch.inference_mode():
            contexts = [None if r.context is None else torch.as_tensor(r.context, device=self.device)[None]
                        for r in rows]  # fmt: skip
            kvs, key_mask = self._encode([r.tokens for r in rows], contexts)
            denoise = self._denoiser(kvs, key_mask, guidance, films, guidance_interval)
            start = randn((len(rows), FRAMES_PER_SEGMENT, NUM_MEL_BINS), streams, self.device)
            x = sample(denoise, start, steps, streams, callback=callback, **(sampler_options or {}))
            mel = scale_to_log_mel(x.float()).cpu().numpy()
        return list(mel)

    def _encode(self, tokens: list[list[int]], contexts: list[torch.Tensor | None]):
        """Cross-attention keys/values (per decoder layer) of a batch of segments, and the key mask.

        Token lists of different lengths are padded and masked (a masked key gets exactly zero weight).
        The context encoder runs when a row has a previous segment; a first segment has none, which the
        reference expresses as a context masked out entirely (exactly zero weight): alone it is skipped,
        beside later segments it gets a masked zero context.
        """
        length = max(len(t) for t in tokens)
        ids = torch.zeros(len(tokens), length, dtype=torch.long)
        for i, t in enumerate(tokens):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        ids = ids.to(self.device)
        key_mask = None if all(len(t) == length for t in tokens) else ids > 0
        encodings = self.notes_encoder(ids, key_mask)
        has_context = [c is not None for c in contexts]
        if any(has_context):
            silence = torch.full((1, FRAMES_PER_SEGMENT, NUM_MEL_BINS), MIN_LOG_MEL, device=self.device)
            previous = torch.cat([silence if c is None else c for c in contexts])
            context = self.context_encoder(scale_features(previous).to(self.dtype))
            encodings = torch.cat([encodings, context], 1)
            if key_mask is not None or not all(has_context):
                notes_mask = key_mask if key_mask is not None else torch.ones_like(ids, dtype=torch.bool)
                context_mask = torch.tensor(has_context, device=self.device)[:, None]
                key_mask = torch.cat([notes_mask, context_mask.expand(-1, FRAMES_PER_SEGMENT)], 1)
        return self.decoder.cross_keys_values(encodings), key_mask

    def _denoiser(
        self, kvs, key_mask, guidance: float, films: FilmCache, interval: IntervalLike = None
    ) -> Denoiser:
        """The samplers' denoise(z, t): the guided noise prediction for a batch of segments, z in the
        sampler's precision, the network in its own. Outside the guidance interval, the conditional
        prediction alone (one pass), exactly as with guidance 1."""

        def conditional(z: torch.Tensor, t: float) -> torch.Tensor:
            return self.decoder(z.to(self.dtype), films(t), kvs, key_mask)

        def both(z: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
            return self.decoder(z.to(self.dtype), films(t), kvs, key_mask, unconditional=True).chunk(2)

        return guided_denoiser(conditional, both, guidance, as_interval(interval))

    def segment_denoiser(
        self,
        tokens: list[int],
        context: np.ndarray | None = None,
        guidance: float = DEFAULT_GUIDANCE,
        guidance_interval: IntervalLike = None,
    ) -> Denoiser:
        """What a sampler sees for one segment: denoise(z, t) for z (B, 256, 128), given its tokens and the
        previous segment's log-mel (256, 128) as context (None for the first). For experiments with
        samplers (bench/sampling_accuracy.py); rendering goes through iter_mel."""
        previous = None if context is None else torch.as_tensor(context, device=self.device)[None]
        with torch.inference_mode():
            kvs, key_mask = self._encode([tokens], [previous])
        films = FilmCache(self.decoder, self.device)
        denoise = self._denoiser(kvs, key_mask, guidance, films, guidance_interval)

        def batched(z: torch.Tensor, t: float) -> torch.Tensor:
            with torch.inference_mode():  # one segment's encodings serve every row of z
                return denoise(z, t) if z.shape[0] == 1 else torch.cat([denoise(r[None], t) for r in z])

        return batched

    def generate_mel(
        self,
        segments: list[list[int]],
        steps: int | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
        callback: ProgressCallback | None = None,
        *,
        sampler: str = DEFAULT_SAMPLER,
        guidance: float = DEFAULT_GUIDANCE,
        guidance_interval: IntervalLike = None,
    ) -> np.ndarray:
        """All segments' log-mel spectrograms, concatenated: (256 * len(segments), 128) float32."""
        mels = list(
            self.iter_mel(segments, steps, seed, generator, callback, sampler=sampler, guidance=guidance,
                          guidance_interval=guidance_interval)
        )  # fmt: skip
        return np.concatenate(mels, axis=0) if mels else np.zeros((0, NUM_MEL_BINS), np.float32)

    def render(
        self,
        midi: str | os.PathLike | bytes,
        steps: int | None = None,
        seed: int = 0,
        callback: ProgressCallback | None = None,
        *,
        sampler: str = DEFAULT_SAMPLER,
        guidance: float = DEFAULT_GUIDANCE,
        guidance_interval: IntervalLike = None,
        remap: Remap | None = None,
        start: float = 0.0,
        length: float | None = None,
        cache: SegmentCache | None = None,
    ) -> Rendering:
        """Render a MIDI file (path or bytes) to 16 kHz mono audio and its log-mel spectrogram.

        sampler, steps, guidance, guidance_interval: how each segment is sampled (see iter_mel; the
        defaults are unipc, 20 steps, guidance 2 on every step); remap: instrument changes
        (spectrosynth.remap.Remap); start/length: render only that part (seconds); cache: a SegmentCache
        (spectrosynth.segment_cache; `SegmentCache.default()` is the command line's), so that rendering
        the song again after an edit samples only from the first segment that changed: the same audio. The
        audio is whole segments long (a multiple of 5.12 s), as the model makes it.
        """
        from spectrosynth.midi import read_midi
        from spectrosynth.remap import apply_remap
        from spectrosynth.tokens import prepare

        if self.vocoder is None:
            raise SpectrosynthError("this synthesizer has no vocoder; use generate_mel for spectrograms only")
        self.sampler(sampler, steps, guidance)  # a bad option fails before the MIDI file is read
        guidance_interval = as_interval(guidance_interval)
        score = read_midi(midi if isinstance(midi, bytes) else Path(midi))
        if remap is not None:
            score, _ = apply_remap(score, remap)
        song = prepare(score, start=start, length=length)
        streamer, mels, audio = StreamingVocoder(self.vocoder), [], []
        for mel in self.iter_mel(
            [s.tokens for s in song.segments], steps, seed, None, callback,
            sampler=sampler, guidance=guidance, guidance_interval=guidance_interval, cache=cache,
        ):  # fmt: skip
            mels.append(mel)
            audio += streamer.feed(mel)  # the vocoder never sees the whole song at once
        audio += streamer.finish()
        return Rendering(np.concatenate(audio), np.concatenate(mels), song.segments)
