"""The two encoders: notes (token segments) and context (the previous segment's spectrogram).

Both are 12-layer T5 encoders in the base model; they share structure, not weights. Their position tables
are stored weights (sinusoids with permuted bands and random phases, fixed at training time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spectrosynth.models.layers import Dropout, EncoderLayer, FromConfig, RMSNorm


@dataclass(frozen=True)
class EncoderConfig(FromConfig):
    """Hyperparameters from a published encoder `config.json` (base values in comments)."""

    d_model: int  # 768
    num_layers: int  # 12
    num_heads: int  # 12
    d_kv: int  # 64
    d_ff: int  # 2048
    max_length: int = 2048  # notes encoder: token positions
    vocab_size: int = 1536  # notes encoder: embedding rows
    input_dims: int = 128  # context encoder: mel bins
    targets_context_length: int = 256  # context encoder: frames
    dropout_rate: float = 0.1  # training only


class Encoder(nn.Module):
    """Embedding (subclass) + position table, then pre-norm layers and a final RMSNorm."""

    def __init__(self, config: EncoderConfig, num_positions: int):
        super().__init__()
        self.config = config
        self.position_embedding = nn.Embedding(num_positions, config.d_model)
        c = config
        self.layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.num_heads, c.d_kv, c.d_ff, c.dropout_rate) for _ in range(c.num_layers)
        )
        self.final_norm = RMSNorm(c.d_model)
        self.dropout = Dropout(c.dropout_rate)  # training only: after the embedding ...
        self.final_dropout = Dropout(c.dropout_rate, shared=False)  # ... and the final norm

    def fuse_projections(self) -> None:
        """Merge q/k/v and wi_0/wi_1 into single matrix products (see FilmDecoder.fuse_projections)."""
        for layer in self.layers:
            layer.attn.fuse_self_projections()
            layer.mlp.fuse_input_projections()

    def encode(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, C) embedded inputs -> (B, T, C)."""
        x = self.dropout(x + self.position_embedding.weight[: x.shape[1]])
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.final_dropout(self.final_norm(x))


class NotesEncoder(Encoder):
    """Token ids (B, T) -> encodings (B, T, d_model). T may be shorter than 2048: padding is not needed.

    The reference pads every segment to 2048 tokens and masks the padding out of the attention keys; a
    masked key gets exactly zero weight, so running on the unpadded tokens gives the same encodings.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__(config, config.max_length)
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) int; key_mask (B, T) bool, False for padding (only needed when T is padded)."""
        return self.encode(self.token_embedding(tokens), key_mask)


class ContextEncoder(Encoder):
    """Previous segment's spectrogram, scaled to [-1, 1], (B, 256, 128) -> encodings (B, 256, d_model).

    The pipeline uses it with every frame valid (segments after the first); the first segment's context is
    fully masked in the decoder, so it is not computed at all (see pipeline.py).

    Training also feeds shorter contexts (the start of a song): L < 256 valid frames, **right-aligned**
    (frames 256 - L .. 255) with key_mask False before them. Frame i then gets position i, which is the
    original's "terminal_relative" positions (it stores the frames left-aligned and rolls the positions so
    the last valid frame is always at position 255). Only keys are masked: the masked rows' outputs are
    left as they come and the decoder's cross-attention gives them zero weight. A row must keep at least
    one valid key (an all-masked row would be NaN); a context that is wholly absent is masked in the
    decoder instead.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__(config, config.targets_context_length)
        self.input_proj = nn.Linear(config.input_dims, config.d_model, bias=False)

    def forward(self, features: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, 256, 128); key_mask (B, 256) bool, True for the valid (right-aligned) frames."""
        return self.encode(self.input_proj(features), key_mask)


# Published (diffusers) state-dict names -> ours, for both encoders. Applied by models.load.
ENCODER_KEY_MAP = [
    (r"token_embedder\.weight", "token_embedding.weight"),
    (r"position_encoding\.weight", "position_embedding.weight"),
    (r"input_proj\.weight", "input_proj.weight"),
    (r"encoders\.(\d+)\.layer\.0\.layer_norm\.weight", r"layers.\1.attn_norm.weight"),
    (r"encoders\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight", r"layers.\1.attn.\2.weight"),
    (r"encoders\.(\d+)\.layer\.1\.layer_norm\.weight", r"layers.\1.mlp_norm.weight"),
    (r"encoders\.(\d+)\.layer\.1\.DenseReluDense\.(wi_0|wi_1|wo)\.weight", r"layers.\1.mlp.\2.weight"),
    (r"layer_norm\.weight", "final_norm.weight"),
]
