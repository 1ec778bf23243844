"""The networks being trained: made new (the original's initialisation) or loaded from a model, adapted for
LoRA, and written back in the published layout.

From scratch (t5x/flax initialisers as the original's `layers.py` uses them; torch weights are [out, in],
fan_in = in):
- dense layers (feed-forward, FiLM, time embedding, input and output projections): truncated normal within
  2 standard deviations, std sqrt(1/fan_in) / 0.8796 (so that the truncated std is sqrt(1/fan_in));
- attention q/k/v/o: normal, std sqrt(1/fan_in), and q further divided by sqrt(d_kv) (T5 has no attention
  scaling and folds it into the query's initialisation);
- the token embedding N(0, 1); every norm scale 1;
- the position tables: sinusoids (min scale 1, max scale 10^4) with random phase offsets and randomly
  permuted bands ("fixed_permuted_offset"), and **frozen**: they are never trained, as in the original.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spectrosynth import models, weights
from spectrosynth.errors import SpectrosynthError
from spectrosynth.presets import SIZE_FIELDS, model_index

COMPONENTS = weights.COMPONENTS
_TRUNC_STD_CORRECTION = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def position_table(length: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """The original's fixed position table (`layers.sinusoidal(permute_bands=True,
    random_phase_offsets=True)`): (length, dim) float32. Phases and the band order are random."""
    half = dim // 2
    position = torch.arange(length, dtype=torch.float64)[:, None]
    scale = -math.log(1e4) / (half - 1)
    rads = position * torch.exp(torch.arange(half, dtype=torch.float64) * scale)[None, :]
    sin_offsets = torch.rand(half, generator=generator, dtype=torch.float64) * 2 * math.pi
    cos_offsets = torch.rand(half, generator=generator, dtype=torch.float64) * 2 * math.pi
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, :half] = torch.sin(rads + sin_offsets)
    table[:, half : 2 * half] = torch.cos(rads + cos_offsets)
    return table[:, torch.randperm(dim, generator=generator)].float()


def _dense_(weight: torch.Tensor, generator: torch.Generator) -> None:
    std = math.sqrt(1.0 / weight.shape[1]) / _TRUNC_STD_CORRECTION
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std, generator=generator)


def initialise(net: nn.Module, generator: torch.Generator) -> None:
    """The original's initialisation of a fresh network (see the module docstring), in place."""
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, models.layers.Attention):
                for part in ("q", "k", "v", "o"):
                    w = getattr(module, part).weight
                    w.normal_(0.0, math.sqrt(1.0 / w.shape[1]), generator=generator)
                module.q.weight.div_(math.sqrt(module.d_kv))
            elif isinstance(module, nn.Linear) and not _in_attention(name):
                _dense_(module.weight, generator)
            elif isinstance(module, models.layers.RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, nn.Embedding):
                if name == "token_embedding":
                    module.weight.normal_(0.0, 1.0, generator=generator)
                else:  # a position table
                    module.weight.copy_(position_table(*module.weight.shape, generator))


def _in_attention(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("q", "k", "v", "o") and ("attn" in name)


def freeze_positions(nets: dict[str, nn.Module]) -> None:
    """The position tables are fixed in the original (stop_gradient): never trained here either."""
    for net in nets.values():
        net.position_embedding.weight.requires_grad_(False)


def size_configs(size: str | os.PathLike[str], dropout: float | None = None) -> dict[str, dict[str, Any]]:
    """The configs of a size to train from scratch: a name (spectrosynth.presets.SIZES) or a JSON file
    holding d_model, num_layers, num_heads, d_kv and d_ff."""
    from spectrosynth.presets import SIZES, configs_for, model_configs

    rate = 0.1 if dropout is None else dropout
    if str(size) in SIZES:
        return model_configs(str(size), rate)
    path = Path(size)
    if not path.is_file():
        raise SpectrosynthError(
            f"--config {size}: not a size ({', '.join(SIZES)}) nor a JSON file of {', '.join(SIZE_FIELDS)}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        values = [int(data[k]) for k in SIZE_FIELDS]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpectrosynthError(
            f"--config {path}: needs a JSON object with the integers {', '.join(SIZE_FIELDS)} ({e})"
        ) from None
    return configs_for(*values, dropout_rate=rate)


def new_networks(configs: dict[str, dict[str, Any]], seed: int) -> dict[str, nn.Module]:
    """Fresh networks of these configs, initialised as the original's, in training mode."""
    generator = torch.Generator().manual_seed(seed)
    nets = {}
    for component in COMPONENTS:
        net = models.build(component, configs[component]).train().requires_grad_(True)
        initialise(net, generator)
        nets[component] = net
    freeze_positions(nets)
    return nets


def load_networks(
    folder: str | os.PathLike[str], dropout: float | None = None
) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]]]:
    """A model folder's networks (weights copied, so training does not write into the folder), in training
    mode, and its configs. `dropout` replaces the configs' dropout rate when given."""
    nets, configs = {}, {}
    for component in COMPONENTS:
        config, state = weights.read_checked_state_dict(folder, component)
        if dropout is not None:
            config = {**config, "dropout_rate": dropout}
        configs[component] = config
        net = models.build(component, config)
        net.load_state_dict(models.rename_published(state, component), strict=True)
        nets[component] = net.train().requires_grad_(True)
    configs["scheduler"] = weights.read_config(folder, "scheduler")
    freeze_positions(nets)
    return nets, configs


def check_size(configs: dict[str, dict[str, Any]], size_config: dict[str, dict[str, Any]], init: str) -> None:
    """With both --init and --config: the init model must be of that size."""
    for component in COMPONENTS:
        have = {k: configs[component].get(k) for k in SIZE_FIELDS}
        want = {k: size_config[component].get(k) for k in SIZE_FIELDS}
        if have != want:
            diff = ", ".join(f"{k} {have[k]} not {want[k]}" for k in SIZE_FIELDS if have[k] != want[k])
            raise SpectrosynthError(
                f"--init {init} does not match --config: its {component} has {diff}; leave out --config to "
                "fine-tune the model at its own size"
            )


#: Decoder modules LoRA adapts, by --lora-targets (regular expressions over module names).
LORA_TARGETS = {
    "attention": r"layers\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)",
    "attention+film": r"layers\.\d+\.((self_attn|cross_attn)\.(q|k|v|o)|(self_attn_film|mlp_film)\.proj)",
    "all": r"layers\.\d+\.((self_attn|cross_attn)\.(q|k|v|o)|(self_attn_film|mlp_film)\.proj"
    r"|mlp\.(wi_0|wi_1|wo))",
}


def peft():
    """The peft package (with the torch module its LoRA layers look for loaded), or a one-line error."""
    try:
        import torch.distributed.tensor  # noqa: F401 - peft checks isinstance(..., DTensor) without importing
    except ImportError:  # a torch build without distributed support
        pass
    try:
        import peft as peft_module
    except ImportError:
        raise SpectrosynthError(
            "LoRA needs peft; install it with pip install 'spectrosynth[train]'"
        ) from None
    return peft_module


def add_lora(decoder: nn.Module, rank: int, alpha: float, targets: str) -> nn.Module:
    """The decoder with LoRA adapters (peft) on the `targets` modules; only the adapters train."""
    p = peft()
    config = p.LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS[targets], lora_dropout=0.0)
    decoder.requires_grad_(False)
    return p.inject_adapter_in_model(config, decoder)


def merged_decoder(decoder: nn.Module, configs: dict[str, dict[str, Any]]) -> nn.Module:
    """A plain decoder (no adapters) equal to `decoder` with its LoRA adapters merged into the weights."""
    plain = models.build("decoder", configs["decoder"])
    state = {}
    with torch.no_grad():
        for name, module in decoder.named_modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
                state[f"{name}.weight"] = module.base_layer.weight + delta
        for name, tensor in decoder.state_dict().items():
            if "lora_" in name:
                continue
            state.setdefault(name.replace(".base_layer", ""), tensor)
    plain.load_state_dict(state, strict=True)
    return plain


def published_state(net: nn.Module, component: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A network's weights under the published (diffusers) names, float32, contiguous."""
    ours = net.state_dict()
    state = {}
    for published in weights.published_keys(component, config):
        (mine,) = models.rename_published({published: None}, component)
        state[published] = ours[mine].detach().to("cpu", torch.float32).contiguous()
    return state


def save_published(
    folder: str | os.PathLike[str],
    nets: dict[str, nn.Module],
    configs: dict[str, dict[str, Any]],
    vocoder: Path | None,
) -> Path:
    """Write the networks as a model folder in the published layout (configs, safetensors per component,
    the scheduler config, model_index.json and, when given, the vocoder copied), atomically
    (checkpoint.atomic_folder)."""
    from safetensors.torch import save_file

    from spectrosynth.training.checkpoint import atomic_folder

    folder = Path(folder)
    with atomic_folder(folder) as part:
        (part / weights.MODEL_INDEX).write_text(json.dumps(model_index(), indent=2, sort_keys=True) + "\n")
        (part / "scheduler").mkdir()
        (part / weights.SCHEDULER_CONFIG).write_text(json.dumps(configs["scheduler"], indent=2) + "\n")
        for component in COMPONENTS:
            (part / component).mkdir()
            (part / component / "config.json").write_text(json.dumps(configs[component], indent=2) + "\n")
            state = published_state(nets[component], component, configs[component])
            save_file(state, part / component / weights.WEIGHTS_SAFETENSORS, metadata={"format": "pt"})
        if vocoder is not None:
            (part / "melgan").mkdir()
            shutil.copyfile(vocoder, part / weights.MELGAN)
    return folder
