"""The model's three networks and loading them from the published state dicts."""

from __future__ import annotations

import re

import torch
from torch import nn

from spectrosynth.models.decoder import DECODER_KEY_MAP, DecoderConfig, FilmDecoder
from spectrosynth.models.encoders import ENCODER_KEY_MAP, ContextEncoder, EncoderConfig, NotesEncoder

__all__ = [
    "ContextEncoder",
    "DecoderConfig",
    "EncoderConfig",
    "FilmDecoder",
    "NotesEncoder",
    "build",
    "rename_published",
]

KEY_MAPS = {
    "notes_encoder": ENCODER_KEY_MAP,
    "continuous_encoder": ENCODER_KEY_MAP,
    "decoder": DECODER_KEY_MAP,
}
CLASSES = {
    "notes_encoder": (NotesEncoder, EncoderConfig),
    "continuous_encoder": (ContextEncoder, EncoderConfig),
    "decoder": (FilmDecoder, DecoderConfig),
}


def rename_published(state: dict[str, torch.Tensor], component: str) -> dict[str, torch.Tensor]:
    """Published (diffusers) key names -> this package's module names, one rule table per component."""
    rules = [(re.compile(p), r) for p, r in KEY_MAPS[component]]
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in rules:
            if pattern.fullmatch(key):
                out[pattern.sub(replacement, key)] = tensor
                break
        else:
            raise KeyError(f"{component}: no rule for published key {key!r}")
    return out


def build(component: str, config: dict, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A network from its published config and (checked, published-name) state dict, in eval mode.

    The module is created on the meta device and takes the given tensors as its parameters (no copy), so
    loading holds one copy of the weights. Without `state`, the weights are uninitialised (for tests).
    """
    cls, config_cls = CLASSES[component]
    if state is None:
        return cls(config_cls.from_dict(config)).eval().requires_grad_(False)
    with torch.device("meta"):
        module = cls(config_cls.from_dict(config))
    module.load_state_dict(rename_published(state, component), strict=True, assign=True)
    return module.eval().requires_grad_(False)
