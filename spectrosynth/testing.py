"""Small random checkpoints in exactly the published layout, for tests and benchmarks without real weights.

`write_checkpoint` writes a folder that `spectrosynth.weights.resolve_model` accepts and that the reference
implementation (diffusers) loads with strict keys: the same configs, state_dict key names, scheduler config,
model_index.json and an ONNX vocoder with the published input and output signature. The weights are random
but scaled so activations stay of order one through a full-depth model. The vocoder is one convolution
(`write_vocoder`), or with `vocoder="soundstream"` SoundStream's decoder at the published file's size and
cost (`write_soundstream_vocoder`), for timing the vocoder and the streaming context it needs.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from spectrosynth.presets import (  # noqa: F401 (re-exported for tests)
    CLASS_NAMES,
    PUBLISHED_DIFFUSERS_VERSION,
    SIZES,
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


def small_configs() -> dict[str, dict[str, Any]]:
    """The authors' small model (small_with_context: T5.1.1 Small sizes), keyed by component."""
    return model_configs("small")


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
    The file is written without the onnx package (`_onnx_conv_model`), so this works with spectrosynth's
    runtime dependencies alone; its bytes are what onnx's helpers serialize for the same graph.
    """
    kernel = 5
    rng = np.random.default_rng(seed)
    weight = (
        rng.standard_normal((SAMPLES_PER_FRAME, MEL_BINS, kernel)) * 0.05 / np.sqrt(MEL_BINS * kernel)
    ).astype(np.float32)
    bias = (rng.standard_normal(SAMPLES_PER_FRAME) * 0.01).astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_onnx_conv_model(weight, bias))
    return path


# ONNX's protobuf messages (onnx/onnx.proto, proto2), written field by field in field-number order as
# protobuf serializes them: varints (wire type 0) and length-delimited bytes (wire type 2), repeated scalars
# unpacked. Field numbers: ModelProto ir_version 1, producer_name 2, graph 7, opset_import 8;
# OperatorSetIdProto domain 1, version 2; GraphProto node 1, name 2, initializer 5, input 11, output 12;
# NodeProto input 1, output 2, op_type 4, attribute 5; AttributeProto name 1, ints 8, type 20 (INTS = 7);
# TensorProto dims 1, data_type 2 (FLOAT = 1, INT64 = 7), name 8, raw_data 9; ValueInfoProto name 1, type 2;
# TypeProto tensor_type 1; TypeProto.Tensor elem_type 1, shape 2; TensorShapeProto dim 1; Dimension
# dim_value 1, dim_param 2.


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negative numbers
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _message(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _node(op: str, inputs: list[str], outputs: list[str], **ints: list[int]) -> bytes:
    attributes = b"".join(
        _message(5, _message(1, name) + b"".join(_int(8, v) for v in values) + _int(20, 7))
        for name, values in sorted(ints.items())
    )
    return (
        b"".join(_message(1, i) for i in inputs)
        + b"".join(_message(2, o) for o in outputs)
        + _message(4, op)
        + attributes
    )


def _tensor(name: str, array: np.ndarray) -> bytes:
    data_type = {np.dtype(np.float32): 1, np.dtype(np.int64): 7}[array.dtype]
    dims = b"".join(_int(1, d) for d in array.shape)
    return (
        dims
        + _int(2, data_type)
        + _message(8, name)
        + _message(9, array.astype(array.dtype.newbyteorder("<")).tobytes())
    )


def _value_info(name: str, shape: list[int | str]) -> bytes:
    dims = b"".join(_message(1, _int(1, d) if isinstance(d, int) else _message(2, d)) for d in shape)
    return _message(1, name) + _message(2, _message(1, _int(1, 1) + _message(2, dims)))  # elem_type FLOAT


def _onnx_conv_model(weight: np.ndarray, bias: np.ndarray) -> bytes:
    """The one-convolution vocoder as an ONNX model (opset 17, IR version 8, readable by onnxruntime 1.14
    and later): Transpose -> Conv (kernel 5, padded 2 each side) -> Tanh -> Transpose -> Reshape."""
    kernel = weight.shape[2]
    nodes = [
        _node("Transpose", ["input_features"], ["channels_first"], perm=[0, 2, 1]),
        _node(
            "Conv",
            ["channels_first", "conv_weight", "conv_bias"],
            ["conv"],
            kernel_shape=[kernel],
            pads=[kernel // 2, kernel // 2],
        ),
        _node("Tanh", ["conv"], ["samples"]),
        _node("Transpose", ["samples"], ["frames_first"], perm=[0, 2, 1]),
        _node("Reshape", ["frames_first", "flat_shape"], ["waveform"]),
    ]
    initializers = [
        _tensor("conv_weight", weight),
        _tensor("conv_bias", bias),
        _tensor("flat_shape", np.array([0, -1], dtype=np.int64)),
    ]
    graph = (
        b"".join(_message(1, n) for n in nodes)
        + _message(2, "tiny_mel_decoder")
        + b"".join(_message(5, t) for t in initializers)
        + _message(11, _value_info("input_features", ["batch", "frames", MEL_BINS]))
        + _message(12, _value_info("waveform", ["batch", "samples"]))
    )
    opset = _message(1, "") + _int(2, 17)
    return _int(1, 8) + _message(2, "spectrosynth") + _message(7, graph) + _message(8, opset)


# --------------------------------------------------------------------------------------------------------
# A full-size stand-in for the published vocoder: SoundStream's decoder with random weights.
#
# The published melgan/model.onnx (60.5 MB) is an ONNX export (kashif/soundstream_mel_decoder) of TF-Hub's
# google/soundstream/mel/decoder/music/1, "a SoundStream decoder which inverts mel-spectrograms"; neither
# its model card nor the authors' code (music_spectrogram_diffusion/audio_codecs.py only calls it) gives its
# layers. SoundStream's decoder (Zeghidour et al. 2021, section III and figure 2) fed with the 128 mel bins
# at C = 56 has 14.86 M parameters, 59.4 MB of float32: the published file's size. Figure 2 of the paper:
#   Conv1D(k=7, 16C) -> DecoderBlock(8C, S=8) -> (4C, 5) -> (2C, 4) -> (C, 2) -> Conv1D(k=7, 1)
#   DecoderBlock(N, S): ConvTranspose1D(2N -> N, k=2S, stride S), ResidualUnit(N, dilation 1, 3, 9)
#   ResidualUnit(N, d): x + Conv1D(k=1)(Conv1D(k=7, dilation d)(x)), ELU activations
# with the strides' product 320, one mel frame's samples. The paper's convolutions are causal (padded on the
# past side only, for streaming); `causal=False` pads both sides instead, as an offline decoder may.

#: SoundStream decoder blocks' upsampling strides (their product is SAMPLES_PER_FRAME) and its residual
#: units' dilations; every convolution but the 1-wide ones has kernel 7.
SOUNDSTREAM_STRIDES = (8, 5, 4, 2)
SOUNDSTREAM_DILATIONS = (1, 3, 9)
SOUNDSTREAM_KERNEL = 7
SOUNDSTREAM_CHANNELS = 56  # C: 14 859 265 parameters, 59.4 MB of float32 (the published file: 60.5 MB)
# The decoder's input scaling, folded into its first convolution: the log-mel range [ln 1e-5, 4] -> [-1, 1].
_LOG_MEL_MIN, _LOG_MEL_MAX = math.log(1e-5), 4.0


class _Conv(torch.nn.Conv1d):
    """A 1-D convolution that keeps the length: padded on the past side only (causal), or on both."""

    def __init__(self, inputs: int, outputs: int, kernel: int, dilation: int = 1, causal: bool = False):
        self.reach = (kernel - 1) * dilation  # positions it looks across, besides the current one
        super().__init__(inputs, outputs, kernel, dilation=dilation, padding=0 if causal else self.reach // 2)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            x = torch.nn.functional.pad(x, (self.reach, 0))
        return super().forward(x)

    def depends_on(self, first: int, last: int) -> tuple[int, int]:
        """The input positions that output positions [first, last] read."""
        return (
            (first - self.reach, last) if self.causal else (first - self.reach // 2, last + self.reach // 2)
        )


class _Upsample(torch.nn.ConvTranspose1d):
    """A transposed convolution of kernel 2S and stride S: L positions -> L·S. Causal: the last S of the
    (L + 1)·S outputs are dropped, so output n reads inputs n // S - 1 and n // S; otherwise ceil(S / 2)
    are dropped at the start and the rest at the end."""

    def __init__(self, inputs: int, outputs: int, stride: int, causal: bool = False):
        self.crop = 0 if causal else (stride + 1) // 2  # outputs dropped at the start
        extra = 0 if causal else 2 * self.crop - stride  # one more at the end for an odd stride
        super().__init__(inputs, outputs, 2 * stride, stride=stride, padding=self.crop, output_padding=extra)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y[..., : -self.stride[0]] if self.causal else y

    def depends_on(self, first: int, last: int) -> tuple[int, int]:
        stride = self.stride[0]
        return (first + self.crop) // stride - 1, (last + self.crop) // stride


class _ResidualUnit(torch.nn.Module):
    def __init__(self, channels: int, dilation: int, causal: bool):
        super().__init__()
        self.dilated = _Conv(channels, channels, SOUNDSTREAM_KERNEL, dilation, causal)
        self.pointwise = _Conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        elu = torch.nn.functional.elu
        return x + self.pointwise(elu(self.dilated(elu(x))))

    def depends_on(self, first: int, last: int) -> tuple[int, int]:
        return self.dilated.depends_on(first, last)  # the skip path reads [first, last] itself


class SoundStreamDecoder(torch.nn.Module):
    """SoundStream's decoder on log-mel frames: (batch, frames, 128) -> (batch, frames · 320) samples.

    ELU comes before every convolution but the first (pre-activation, as in SEANet and EnCodec's decoders).
    """

    def __init__(self, channels: int = SOUNDSTREAM_CHANNELS, causal: bool = True):
        super().__init__()
        width = 16 * channels
        layers: list[torch.nn.Module] = [_Conv(MEL_BINS, width, SOUNDSTREAM_KERNEL, causal=causal)]
        for stride in SOUNDSTREAM_STRIDES:
            layers += [torch.nn.ELU(), _Upsample(width, width // 2, stride, causal)]
            width //= 2
            layers += [_ResidualUnit(width, d, causal) for d in SOUNDSTREAM_DILATIONS]
        layers += [torch.nn.ELU(), _Conv(width, 1, SOUNDSTREAM_KERNEL, causal=causal)]
        self.layers = torch.nn.Sequential(*layers)
        self.channels, self.causal = channels, causal

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.layers(mel.transpose(1, 2)).flatten(1)  # (B, F, 128) -> (B, 128, F) -> (B, 1, F·320)

    def receptive_field(self) -> tuple[int, int]:
        """(before, after): how many frames before and after its own the audio of a frame depends on,
        found by following the samples of one frame back through every layer to the input."""
        frame = 10_000  # far from both ends
        first, last = frame * SAMPLES_PER_FRAME, (frame + 1) * SAMPLES_PER_FRAME - 1
        for layer in reversed(self.layers):
            if hasattr(layer, "depends_on"):
                first, last = layer.depends_on(first, last)
        return frame - first, last - frame


def soundstream_decoder(
    channels: int = SOUNDSTREAM_CHANNELS, seed: int = 0, causal: bool = True
) -> SoundStreamDecoder:
    """A SoundStreamDecoder with random weights, deterministic for a given seed, scaled so that activations
    stay of order one and the audio of a log-mel spectrogram is of order 0.1 to 1 (standard deviation 0.2 to
    0.4, peaks 1 to 2 for music, silence or noise alike).

    Weights N(0, g² / fan_in): g = 2 for the first convolution, whose input is first mapped from the log-mel
    range to [-1, 1] (the mapping folded into its weights and bias); g = 1 for the transposed convolutions
    (fan-in 2·channels), 1.5 for the dilated ones, 0.5 for each residual unit's pointwise one (so the three
    units grow the signal moderately) and 0.3 for the output. Biases N(0, 0.01²).
    """
    model = SoundStreamDecoder(channels, causal)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ConvTranspose1d):  # weight (in, out, 2S): an output reads 2 inputs
                gain, fan_in = 1.0, module.weight.shape[0] * 2
            elif isinstance(module, torch.nn.Conv1d):  # weight (out, in, k)
                fan_in = module.weight.shape[1] * module.weight.shape[2]
                gain = {"layers.0": 2.0, f"layers.{len(model.layers) - 1}": 0.3}.get(name, 1.5)
                gain = 0.5 if name.endswith("pointwise") else gain
            else:
                continue
            weight = torch.randn(module.weight.shape, generator=generator) * gain / math.sqrt(fan_in)
            module.weight.copy_(weight)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.01)
        # conv((x - lo)·a - 1) = conv(x·a) + (-lo·a - 1)·sum(w), a = 2 / (hi - lo); the padding aside
        first = model.layers[0]
        scale = 2.0 / (_LOG_MEL_MAX - _LOG_MEL_MIN)
        first.bias.add_((-_LOG_MEL_MIN * scale - 1.0) * first.weight.sum(dim=(1, 2)))
        first.weight.mul_(scale)
    return model.eval()


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401 - torch.onnx's exporter writes the file with it
    except ImportError:
        raise RuntimeError(
            "the SoundStream stand-in is exported with torch.onnx, which needs the onnx package: pip install "
            "onnx (the test extra has it), or use the one-convolution stand-in (vocoder 'tiny')"
        ) from None


def write_soundstream_vocoder(
    path: str | os.PathLike[str], seed: int = 0, channels: int = SOUNDSTREAM_CHANNELS, causal: bool = True
) -> Path:
    """SoundStream's decoder with random weights (`soundstream_decoder`) as ONNX, with the published
    vocoder's signature: input ``input_features`` float32 [batch, frames, 128] log-mel, output ``waveform``
    float32 [batch, frames·320]. At the default width (C = 56) it has the published file's size and cost
    (14.9 M parameters, a 59 MB file); C = 4 gives the same layers and receptive field at 130 k parameters.
    """
    _need_onnx()
    model = soundstream_decoder(channels, seed, causal)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)  # causal padding
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter, chosen
        torch.onnx.export(
            model,
            (torch.zeros(1, 8, MEL_BINS),),
            str(path),
            input_names=["input_features"],
            output_names=["waveform"],
            dynamic_axes={
                "input_features": {0: "batch", 1: "frames"},
                "waveform": {0: "batch", 1: "samples"},
            },
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript
        )
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_checkpoint(
    folder: str | os.PathLike[str],
    size: Literal["tiny", "mini", "small", "base"] = "tiny",
    seed: int = 0,
    weights_format: Literal["bin", "safetensors"] = "bin",
    vocoder: Literal["tiny", "soundstream"] = "tiny",
) -> Path:
    """Write a complete random model in the published layout into `folder` (created if needed); returns it.

    `size` is one of spectrosynth.presets.SIZES: "base" has the published sizes (411.7M parameters, 1.65 GB
    of float32), "small" the authors' small_with_context's (104.0M, 416 MB), "mini" 20 M, "tiny" a few MB.
    `weights_format` "bin" writes pickled state_dicts with torch.save, as published; "safetensors" writes
    diffusion_pytorch_model.safetensors instead. `vocoder` "tiny" is a one-convolution stand-in
    (`write_vocoder`, fast); "soundstream" has the published vocoder's architecture, size and cost
    (`write_soundstream_vocoder`, 59 MB).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    if weights_format not in ("bin", "safetensors"):
        raise ValueError(f"weights_format must be 'bin' or 'safetensors', not {weights_format!r}")
    if vocoder not in ("tiny", "soundstream"):
        raise ValueError(f"vocoder must be 'tiny' or 'soundstream', not {vocoder!r}")
    if vocoder == "soundstream":
        _need_onnx()  # before anything is written
    configs = model_configs(size)
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
    write_melgan = write_soundstream_vocoder if vocoder == "soundstream" else write_vocoder
    write_melgan(folder / MELGAN, seed=zlib.crc32(f"melgan-{seed}".encode()))
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
        "for trying spectrosynth without downloading the model, and for tests and benchmarks. Sizes: tiny (a "
        "few MB), mini, small (the authors' small_with_context, 104 M parameters) and base (the published "
        "model's, 412 M).",
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["bin", "safetensors"], default="bin", dest="weights_format")
    parser.add_argument(
        "--vocoder",
        choices=["tiny", "soundstream"],
        default="tiny",
        help="melgan/model.onnx: a one-convolution stand-in (tiny, fast), or SoundStream's decoder at the "
        "published file's size and cost (soundstream, 59 MB, for timing the vocoder)",
    )
    args = parser.parse_args(argv)
    try:
        folder = write_checkpoint(
            args.folder, args.size, seed=args.seed, weights_format=args.weights_format, vocoder=args.vocoder
        )
    except RuntimeError as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    print(folder)


if __name__ == "__main__":
    main()
