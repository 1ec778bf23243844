"""The FiLM decoder: predicts the noise in a noisy spectrogram, given the encodings and the noise time.

Per layer: FiLM-conditioned self-attention, cross-attention over [notes encodings, context encodings], and a
FiLM-conditioned gated-GELU feed-forward. FiLM: h * (1 + scale) + shift, with [scale | shift] a linear
function of the time conditioning.

Work that does not change between diffusion steps is split out so the sampler can do it once:
`conditioning(noise_time)` depends only on the step (the same for every segment), and
`cross_keys_values(encodings)` only on the segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spectrosynth.models.layers import (
    Attention,
    Dropout,
    FromConfig,
    GatedGeluMLP,
    RMSNorm,
    clamp_float16,
    timestep_embedding,
)

KV = tuple[torch.Tensor, torch.Tensor]
FilmParams = tuple[torch.Tensor, torch.Tensor]  # (1 + scale, shift)


@dataclass(frozen=True)
class DecoderConfig(FromConfig):
    """Hyperparameters from the published decoder `config.json` (base values in comments)."""

    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_kv: int = 64
    d_ff: int = 2048
    input_dims: int = 128  # mel bins
    targets_length: int = 256  # frames per segment
    max_decoder_noise_time: float = 2000.0  # the published checkpoint says 20000.0: always read the config
    dropout_rate: float = 0.1  # training only


class FiLM(nn.Module):
    """Feature-wise linear modulation by the time conditioning."""

    def __init__(self, cond_dim: int, d_model: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * d_model, bias=False)

    def scale_shift(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond (B, 1, 4C) -> (1 + scale, shift), each (B, 1, C): [scale | shift] is one linear map."""
        scale, shift = self.proj(cond).chunk(2, dim=-1)
        return 1 + scale, shift

    @staticmethod
    def apply(x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x * (1 + scale) + shift, as one fused multiply-add."""
        one_plus_scale, shift = film
        return torch.addcmul(shift, x, one_plus_scale)


class DecoderLayer(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.self_attn_norm = RMSNorm(c.d_model)
        self.self_attn_film = FiLM(4 * c.d_model, c.d_model)
        self.self_attn = Attention(c.d_model, c.num_heads, c.d_kv)
        self.cross_attn_norm = RMSNorm(c.d_model)
        self.cross_attn = Attention(c.d_model, c.num_heads, c.d_kv)
        self.mlp_norm = RMSNorm(c.d_model)
        self.mlp_film = FiLM(4 * c.d_model, c.d_model)
        self.mlp = GatedGeluMLP(c.d_model, c.d_ff, c.dropout_rate)
        self.dropout = Dropout(c.dropout_rate)  # training only: on each branch's output

    def forward(
        self, y, films: tuple[FilmParams, FilmParams], kv: KV, key_mask=None, conditioned: int | None = None
    ) -> torch.Tensor:
        """y (B, T, C). conditioned: only the first `conditioned` rows attend to the encodings; the others are
        the unconditional branch, where cross-attention adds exactly 0 (see FilmDecoder.forward)."""
        y = self.self_attention(y, films[0])
        y = self.cross_attention(y, kv, key_mask, conditioned)
        return self.feed_forward(y, films[1])

    def self_attention(self, y: torch.Tensor, film: FilmParams) -> torch.Tensor:
        return clamp_float16(y + self.dropout(self.self_attn(FiLM.apply(self.self_attn_norm(y), film))))

    def cross_attention(self, y, kv: KV, key_mask=None, conditioned: int | None = None) -> torch.Tensor:
        if conditioned is not None and conditioned < y.shape[0]:
            head = self.cross_attention(y[:conditioned], kv, key_mask)
            return torch.cat([head, y[conditioned:]])
        attended = self.cross_attn(self.cross_attn_norm(y), kv=kv, key_mask=key_mask)
        return clamp_float16(y + self.dropout(attended))

    def feed_forward(self, y: torch.Tensor, film: FilmParams) -> torch.Tensor:
        return clamp_float16(y + self.dropout(self.mlp(FiLM.apply(self.mlp_norm(y), film))))


class FilmDecoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = self.config = config
        self.time_proj1 = nn.Linear(c.d_model, 4 * c.d_model, bias=False)
        self.time_proj2 = nn.Linear(4 * c.d_model, 4 * c.d_model, bias=False)
        self.position_embedding = nn.Embedding(c.targets_length, c.d_model)
        self.input_proj = nn.Linear(c.input_dims, c.d_model, bias=False)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.final_norm = RMSNorm(c.d_model)
        self.output_proj = nn.Linear(c.d_model, c.input_dims, bias=False)
        self.dropout = Dropout(c.dropout_rate)  # training only: after the input and the final norm

    def conditioning(self, noise_time: torch.Tensor) -> list[tuple[FilmParams, FilmParams]]:
        """noise_time (B,) in [0, 1) -> per layer, the FiLM (1 + scale, shift) of its self-attention and of
        its feed-forward, each (B, 1, C)."""
        emb = timestep_embedding(
            noise_time * self.config.max_decoder_noise_time,
            self.config.d_model,
            self.config.max_decoder_noise_time,
        ).to(self.time_proj1.weight.dtype)
        cond = F.silu(self.time_proj2(F.silu(self.time_proj1(emb)))).unsqueeze(1)  # (B, 1, 4C)
        return [(lyr.self_attn_film.scale_shift(cond), lyr.mlp_film.scale_shift(cond)) for lyr in self.layers]

    def fuse_projections(self) -> None:
        """Merge the projections that read the same input (self-attention q/k/v, feed-forward wi_0/wi_1)
        into single matrix products: the same arithmetic with fewer, larger products."""
        for layer in self.layers:
            layer.self_attn.fuse_self_projections()
            layer.mlp.fuse_input_projections()

    def cross_keys_values(self, encodings: torch.Tensor) -> list[KV]:
        """encodings (B, S, C), notes then context along S -> per layer, cross-attention keys and values."""
        return [lyr.cross_attn.keys_values(encodings) for lyr in self.layers]

    def forward(
        self,
        x: torch.Tensor,
        films: list[tuple[FilmParams, FilmParams]],
        kvs: list[KV],
        key_mask: torch.Tensor | None = None,
        unconditional: bool = False,
    ) -> torch.Tensor:
        """x (B, 256, 128) noisy features in [-1, 1] -> predicted noise (B, 256, 128).

        films from `conditioning`, kvs from `cross_keys_values`; key_mask (B, S) bool only if S is padded.

        unconditional: also predict without conditioning, for classifier-free guidance; returns
        (2B, 256, 128), the conditional predictions then the unconditional ones. The model was trained with
        both encodings zeroed 10 % of the time; zeroed encodings give zero keys and values (no biases), so
        cross-attention adds exactly 0 to those rows whatever the mask: they skip it. Until the first
        cross-attention both branches are the same, so the first self-attention is computed once.
        """
        b = x.shape[0]
        y = self.dropout(self.input_proj(x) + self.position_embedding.weight[: x.shape[1]])
        for i, (layer, film, kv) in enumerate(zip(self.layers, films, kvs, strict=True)):
            if unconditional and i == 0:
                y = layer.self_attention(y, film[0])
                y = layer.cross_attention(torch.cat([y, y]), kv, key_mask, conditioned=b)
                y = layer.feed_forward(y, film[1])
            else:
                y = layer(y, film, kv, key_mask, conditioned=b if unconditional else None)
        return self.output_proj(self.dropout(self.final_norm(y)))


DECODER_KEY_MAP = [
    (r"conditioning_emb\.0\.weight", "time_proj1.weight"),
    (r"conditioning_emb\.2\.weight", "time_proj2.weight"),
    (r"position_encoding\.weight", "position_embedding.weight"),
    (r"continuous_inputs_projection\.weight", "input_proj.weight"),
    (r"decoders\.(\d+)\.layer\.0\.layer_norm\.weight", r"layers.\1.self_attn_norm.weight"),
    (r"decoders\.(\d+)\.layer\.0\.FiLMLayer\.scale_bias\.weight", r"layers.\1.self_attn_film.proj.weight"),
    (r"decoders\.(\d+)\.layer\.0\.attention\.to_([qkv])\.weight", r"layers.\1.self_attn.\2.weight"),
    (r"decoders\.(\d+)\.layer\.0\.attention\.to_out\.0\.weight", r"layers.\1.self_attn.o.weight"),
    (r"decoders\.(\d+)\.layer\.1\.layer_norm\.weight", r"layers.\1.cross_attn_norm.weight"),
    (r"decoders\.(\d+)\.layer\.1\.attention\.to_([qkv])\.weight", r"layers.\1.cross_attn.\2.weight"),
    (r"decoders\.(\d+)\.layer\.1\.attention\.to_out\.0\.weight", r"layers.\1.cross_attn.o.weight"),
    (r"decoders\.(\d+)\.layer\.2\.layer_norm\.weight", r"layers.\1.mlp_norm.weight"),
    (r"decoders\.(\d+)\.layer\.2\.film\.scale_bias\.weight", r"layers.\1.mlp_film.proj.weight"),
    (r"decoders\.(\d+)\.layer\.2\.DenseReluDense\.(wi_0|wi_1|wo)\.weight", r"layers.\1.mlp.\2.weight"),
    (r"decoder_norm\.weight", "final_norm.weight"),
    (r"spec_out\.weight", "output_proj.weight"),
]
