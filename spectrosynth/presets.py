"""The published model's configuration files, and the model sizes that can be trained from scratch.

`model_configs(size)` gives every config.json of a model folder in the published layout (the same fields and
bookkeeping as google/music-spectrogram-diffusion), so a model trained here loads wherever the published one
does, diffusers included. Sizes (d_model, layers per network, heads x d_kv, gated-GELU width):

| size | d_model | layers | heads x d_kv | d_ff | parameters | what for |
|---|---|---|---|---|---|---|
| tiny | 32 | 2 | 2 x 24 | 64 | 0.3 M | tests: seconds per step on a CPU |
| mini | 256 | 4 | 4 x 64 | 1024 | 20 M | a model a CPU trains in hours (docs/training.md) |
| small | 512 | 8 | 6 x 64 | 1024 | 104 M | the authors' small model |
| base | 768 | 12 | 12 x 64 | 2048 | 412 M | the authors' base model: the published one |

Every size has the published lengths (2048 tokens, 256 frames), vocabulary (1536) and mel bins (128).
"""

from __future__ import annotations

from typing import Any

#: The diffusers version the published configs were written by.
PUBLISHED_DIFFUSERS_VERSION = "0.14.0.dev0"

CLASS_NAMES = {
    "notes_encoder": "SpectrogramNotesEncoder",
    "continuous_encoder": "SpectrogramContEncoder",
    "decoder": "T5FilmDecoder",
}

#: size name -> (d_model, num_layers, num_heads, d_kv, d_ff). tiny's attention width 2 x 24 = 48 is not its
#: d_model 32, so that a transposed q/k/v/o weight fails the shape check.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (32, 2, 2, 24, 64),
    "mini": (256, 4, 4, 64, 1024),
    "small": (512, 8, 6, 64, 1024),
    "base": (768, 12, 12, 64, 2048),
}
SIZE_FIELDS = ("d_model", "num_layers", "num_heads", "d_kv", "d_ff")


def scheduler_config() -> dict[str, Any]:
    """scheduler/scheduler_config.json as published."""
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": PUBLISHED_DIFFUSERS_VERSION,
        "beta_end": 0.02,
        "beta_schedule": "squaredcos_cap_v2",
        "beta_start": 0.0001,
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "trained_betas": None,
        "variance_type": "fixed_large",
    }


def model_index() -> dict[str, Any]:
    """model_index.json as published."""
    return {
        "_class_name": "SpectrogramDiffusionPipeline",
        "_diffusers_version": PUBLISHED_DIFFUSERS_VERSION,
        "continuous_encoder": ["spectrogram_diffusion", "SpectrogramContEncoder"],
        "decoder": ["diffusers", "T5FilmDecoder"],
        "melgan": ["diffusers", "OnnxRuntimeModel"],
        "notes_encoder": ["spectrogram_diffusion", "SpectrogramNotesEncoder"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }


def configs_for(
    d_model: int, num_layers: int, num_heads: int, d_kv: int, d_ff: int, dropout_rate: float = 0.1
) -> dict[str, dict[str, Any]]:
    """Every config of a model of this size, keyed by component, "scheduler" included."""
    size = {"d_model": d_model, "num_layers": num_layers, "num_heads": num_heads, "d_kv": d_kv, "d_ff": d_ff}
    t5 = {**size, "dropout_rate": dropout_rate, "feed_forward_proj": "gated-gelu", "is_decoder": False}
    header = {
        c: {"_class_name": n, "_diffusers_version": PUBLISHED_DIFFUSERS_VERSION}
        for c, n in CLASS_NAMES.items()
    }
    return {
        "notes_encoder": {**header["notes_encoder"], "max_length": 2048, "vocab_size": 1536, **t5},
        "continuous_encoder": {
            **header["continuous_encoder"],
            "input_dims": 128,
            "targets_context_length": 256,
            **t5,
        },
        "decoder": {
            **header["decoder"],
            "input_dims": 128,
            "targets_length": 256,
            "max_decoder_noise_time": 20000.0,
            **size,
            "dropout_rate": dropout_rate,
        },
        "scheduler": scheduler_config(),
    }


def model_configs(size: str, dropout_rate: float = 0.1) -> dict[str, dict[str, Any]]:
    """The configs of a named size (SIZES)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; use one of {', '.join(SIZES)}")
    return configs_for(*SIZES[size], dropout_rate=dropout_rate)
