"""Building blocks shared by the encoders and the decoder (T5.1.1 style).

RMSNorm without bias or mean subtraction, bias-free linear layers, attention without 1/sqrt(d) scaling
(T5 folds it into the initialisation) and without relative position bias, and a gated-GELU feed-forward.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class FromConfig:
    """For the config dataclasses: `from_dict` builds one from a published config.json, ignoring the fields
    the model does not use (dropout, diffusers' bookkeeping)."""

    @classmethod
    def from_dict(cls, config: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, with the statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)


class Attention(nn.Module):
    """Multi-head attention, unscaled scores, no biases."""

    def __init__(self, d_model: int, num_heads: int, d_kv: int):
        super().__init__()
        self.num_heads, self.d_kv = num_heads, d_kv
        inner = num_heads * d_kv
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)
        self.qkv: nn.Linear | None = None  # set by fuse_self_projections

    def fuse_self_projections(self) -> None:
        """For self-attention only: one (3 inner, C) product instead of three (inner, C) ones. The separate
        weights are dropped, so the module keeps one copy of them. Once only: fused stays fused."""
        if self.qkv is not None:
            return
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight])
        self.qkv = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.qkv.weight = nn.Parameter(weight, requires_grad=False)
        del self.q, self.k, self.v

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H * D) -> (B, H, T, D)"""
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.d_kv).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values of `context` (B, S, C), each (B, H, S, D): cacheable across calls."""
        return self.split_heads(self.k(context)), self.split_heads(self.v(context))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) attends to `context` (self-attention when None) or to precomputed `kv`.

        key_mask (B, S) bool: False keys get no attention weight.
        """
        if self.qkv is not None:  # fused self-attention
            q, k, v = (self.split_heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        else:
            q = self.split_heads(self.q(x))
            k, v = kv if kv is not None else self.keys_values(x if context is None else context)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)  # (B, H, T, D)
        b, _, t, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(b, t, self.num_heads * self.d_kv))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation ("gelu_new", Flax's default):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in one fused kernel."""
    return F.gelu(x, approximate="tanh")


class Dropout(nn.Module):
    """Dropout as the original's T5 (flax `nn.Dropout(broadcast_dims=(-2,))`): one mask per example and
    channel, shared along the sequence (frames or tokens), scaled by 1 / (1 - p). Training only: in eval mode
    it returns its input. `shared=False` draws a mask per element (the original does so after the encoders'
    final norm)."""

    def __init__(self, p: float = 0.0, shared: bool = True):
        super().__init__()
        self.p, self.shared = p, shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = (x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1]) if self.shared else x.shape
        keep = torch.rand(shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared={self.shared}"


class GatedGeluMLP(nn.Module):
    """wo(dropout(gelu_tanh(wi_0 x) * wi_1 x))"""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = Dropout(dropout)  # training only, as T5's (a no-op in eval mode)
        self.wi: nn.Linear | None = None  # set by fuse_input_projections

    def fuse_input_projections(self) -> None:
        """One (2 d_ff, C) product for wi_0 and wi_1; the separate weights are dropped. Once only."""
        if self.wi is not None:
            return
        weight = torch.cat([self.wi_0.weight, self.wi_1.weight])
        self.wi = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.wi.weight = nn.Parameter(weight, requires_grad=False)
        del self.wi_0, self.wi_1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wi is not None:
            gate, linear = self.wi(x).chunk(2, dim=-1)
            return self.wo(self.dropout(gelu_tanh(gate) * linear))
        return self.wo(self.dropout(gelu_tanh(self.wi_0(x)) * self.wi_1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm T5 encoder block: self-attention then feed-forward, each with a residual.

    Dropout (training only) on each branch's output and inside the feed-forward, as T5."""

    def __init__(self, d_model: int, num_heads: int, d_kv: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, num_heads, d_kv)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = GatedGeluMLP(d_model, d_ff, dropout)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = clamp_float16(x + self.dropout(self.attn(self.attn_norm(x), key_mask=key_mask)))
        return clamp_float16(x + self.dropout(self.mlp(self.mlp_norm(x))))


def clamp_float16(x: torch.Tensor) -> torch.Tensor:
    """In float16, keep the residual stream finite (T5's activations can exceed 65504, as transformers
    notes for T5 in float16); other precisions are left alone."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max - 1000
    return x.clamp(-limit, limit)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """Sinusoidal embedding of t (B,) -> (B, dim): [sin(t f_k), cos(t f_k)], f_k = P^(-k / (dim/2 - 1)).

    P = max_period. The same float32 operations, in the same order, as the reference
    (diffusers' get_timestep_embedding).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
    angles = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
