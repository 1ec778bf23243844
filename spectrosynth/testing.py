"""Small random checkpoints in exactly the published layout, for tests and benchmarks without real weights.

`write_checkpoint` writes a folder that `spectrosynth.weights.resolve_model` accepts and that the reference
implementation (diffusers) loads with strict keys: the same configs, state_dict key names, scheduler config,
model_index.json and an ONNX vocoder with the published input and output signature. The weights are random
but scaled so activations stay of order one through a full-depth model.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from spectrosynth.presets import (  # noqa: F401 (re-exported for tests)
    CLASS_NAMES,
    PUBLISHED_DIFFUSERS_VERSION,
    model_configs,
    model_index,
    scheduler_config,
)
from spectrosynth.weights import (
    COMPONENTS,
    MELGAN,
    MODEL_INDEX,
    SCHEDULER_CONFIG,
    WEIGHTS_BIN,
    WEIGHTS_SAFETENSORS,
    published_keys,
)

#: Mel bins, and waveform samples per frame of the vocoder (16 kHz, 20 ms hop).
MEL_BINS = 128
SAMPLES_PER_FRAME = 320


def base_configs() -> dict[str, dict[str, Any]]:
    """The published configs (base_with_context), keyed by component, "scheduler" included."""
    return model_configs("base")


def tiny_configs() -> dict[str, dict[str, Any]]:
    """A tiny model with the published lengths, vocabulary and mel bins, so real token segments fit."""
    return model_configs("tiny")


def _is_norm(key: str) -> bool:
    return key.endswith(("layer_norm.weight", "decoder_norm.weight"))


def _is_query(key: str) -> bool:
    return key.endswith(("SelfAttention.q.weight", "attention.to_q.weight"))


def random_state_dict(component: str, config: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights with the published keys and shapes, deterministic for a given seed.

    Linear weights are N(0, 1/fan_in), query weights additionally scaled by d_kv**-0.5 (T5 has no attention
    scaling and folds it into the init), RMSNorm weights 1 + 0.1·N(0, 1), the token embedding N(0, 1) and the
    position tables N(0, 0.5²).
    """
    generator = torch.Generator().manual_seed(seed * len(COMPONENTS) + COMPONENTS.index(component))
    state = {}
    for key, shape in published_keys(component, config).items():
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
        if _is_norm(key):
            x = 1.0 + 0.1 * x
        elif key == "token_embedder.weight":
            pass
        elif key == "position_encoding.weight":
            x = 0.5 * x
        else:
            x = x * shape[1] ** -0.5
            if _is_query(key):
                x = x * config["d_kv"] ** -0.5
        state[key] = x
    return state


def write_vocoder(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """A tiny ONNX stand-in for the SoundStream mel decoder, with the published signature.

    Input ``input_features`` float32 [batch, frames, 128]; output float32 [batch, frames·320]. A Conv1d over
    time (kernel 5) gives it temporal context like a real vocoder; tanh keeps the samples within [-1, 1].
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kernel = 5
    rng = np.random.default_rng(seed)
    weight = (
        rng.standard_normal((SAMPLES_PER_FRAME, MEL_BINS, kernel)) * 0.05 / np.sqrt(MEL_BINS * kernel)
    ).astype(np.float32)
    bias = (rng.standard_normal(SAMPLES_PER_FRAME) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["input_features"], ["channels_first"], perm=[0, 2, 1]),
        helper.make_node(
            "Conv",
            ["channels_first", "conv_weight", "conv_bias"],
            ["conv"],
            kernel_shape=[kernel],
            pads=[2, 2],
        ),
        helper.make_node("Tanh", ["conv"], ["samples"]),
        helper.make_node("Transpose", ["samples"], ["frames_first"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["frames_first", "flat_shape"], ["waveform"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mel_decoder",
        inputs=[
            helper.make_tensor_value_info("input_features", TensorProto.FLOAT, ["batch", "frames", MEL_BINS])
        ],
        outputs=[helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        initializer=[
            numpy_helper.from_array(weight, "conv_weight"),
            numpy_helper.from_array(bias, "conv_bias"),
            numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="spectrosynth"
    )
    model.ir_version = 8  # readable by onnxruntime 1.14 and later
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_checkpoint(
    folder: str | os.PathLike[str],
    size: Literal["tiny", "base"] = "tiny",
    seed: int = 0,
    weights_format: Literal["bin", "safetensors"] = "bin",
) -> Path:
    """Write a complete random model in the published layout into `folder` (created if needed); returns it.

    "base" has the published sizes (411.7M parameters, 1.65 GB of float32); "tiny" is a few MB.
    `weights_format` "bin" writes pickled state_dicts with torch.save, as published; "safetensors" writes
    diffusion_pytorch_model.safetensors instead.
    """
    presets = {"tiny": tiny_configs, "base": base_configs}
    if size not in presets:
        raise ValueError(f"size must be 'tiny' or 'base', not {size!r}")
    if weights_format not in ("bin", "safetensors"):
        raise ValueError(f"weights_format must be 'bin' or 'safetensors', not {weights_format!r}")
    configs = presets[size]()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / MODEL_INDEX, model_index())
    _write_json(folder / SCHEDULER_CONFIG, configs["scheduler"])
    for component in COMPONENTS:
        _write_json(folder / component / "config.json", configs[component])
        state = random_state_dict(component, configs[component], seed)
        if weights_format == "bin":
            torch.save(state, folder / component / WEIGHTS_BIN)
        else:
            from safetensors.torch import save_file

            save_file(state, folder / component / WEIGHTS_SAFETENSORS, metadata={"format": "pt"})
        del state
    write_vocoder(folder / MELGAN, seed=zlib.crc32(f"melgan-{seed}".encode()))
    return folder


@dataclass(frozen=True)
class GaussianData:
    """Data whose every value is drawn from N(mean, std^2), for testing samplers against a known answer.

    For such data the ideal noise predictor under the model's schedule is known in closed form, and so is the
    exact solution of the sampling ODE. Guidance between two of them with the same std is a third one:
    eps_u + w (eps_c - eps_u) is the predictor of mean w mean_c + (1 - w) mean_u.
    """

    mean: float
    std: float

    def eps(self, z: torch.Tensor, t: float) -> torch.Tensor:
        """E[eps | z_t = z] = sigma (z - alpha mean) / (alpha^2 std^2 + sigma^2)."""
        from spectrosynth.sampling.schedule import alpha_sigma

        alpha, sigma = alpha_sigma(t)
        return sigma * (z - alpha * self.mean) / (alpha**2 * self.std**2 + sigma**2)

    def guided(self, uncond: GaussianData, weight: float) -> GaussianData:
        """The data that guidance with weight w between this (conditional) and `uncond` samples."""
        if uncond.std != self.std:
            raise ValueError("guidance between Gaussians keeps this form only for the same std")
        return GaussianData(weight * self.mean + (1 - weight) * uncond.mean, self.std)

    def ode_solution(self, z: torch.Tensor, t_start: float, t_end: float = 0.0) -> torch.Tensor:
        """Where the probability-flow ODE takes z from t_start: the data prediction at t_end along the exact
        trajectory (at t_end = 0, the sample itself). Every trajectory keeps its standardized position
        xi = (z_t - alpha_t mean) / sqrt(alpha_t^2 std^2 + sigma_t^2)."""
        from spectrosynth.sampling.schedule import alpha_sigma

        alpha, sigma = alpha_sigma(t_start)
        xi = (z - alpha * self.mean) / math.sqrt(alpha**2 * self.std**2 + sigma**2)
        alpha, sigma = alpha_sigma(t_end) if t_end > 0 else (1.0, 0.0)
        return self.mean + self.std * xi * (alpha * self.std / math.sqrt(alpha**2 * self.std**2 + sigma**2))


def main(argv: list[str] | None = None) -> None:
    """`python -m spectrosynth.testing FOLDER`: write a random checkpoint to try the pipeline offline."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m spectrosynth.testing",
        description="Write a random checkpoint in the published layout. It renders noise, not music: it is "
        "for trying spectrosynth without downloading the model, and for tests. Needs the `onnx` package.",
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["bin", "safetensors"], default="bin", dest="weights_format")
    args = parser.parse_args(argv)
    print(write_checkpoint(args.folder, args.size, seed=args.seed, weights_format=args.weights_format))


if __name__ == "__main__":
    main()
