"""Guidance on part of the steps only: a guidance interval on the log-SNR scale.

Classifier-free guidance costs a second decoder pass per step. Kynkäänniemi et al. (2024, "Applying
guidance in a limited interval improves sample and distribution quality in diffusion models") apply it only
inside a band of noise levels and take the plain conditional prediction elsewhere, one pass per step; the
ACE-Step music model ships the same idea (../docs/sampling.md has the sources). Here the band is given on
the log-SNR scale lambda(t) of the model's trained schedule (spectrosynth.sampling.schedule), so it means
the same noise levels whatever the sampler, its step count or its grid: a step at time t is guided when
lo <= lambda(t) <= hi. lambda runs from -20 (pure noise, t = 1) to +20 (the data, t = 0).

The full interval (-inf, inf) is today's sampler, bit for bit; an interval that holds no step is the
unguided sampler (guidance 1), bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from spectrosynth.errors import SpectrosynthError
from spectrosynth.sampling.base import Denoiser, guide
from spectrosynth.sampling.schedule import logsnr


@dataclass(frozen=True)
class GuidanceInterval:
    """Guide the steps whose log-SNR lies in [low, high] (both included)."""

    low: float = -math.inf
    high: float = math.inf

    def __post_init__(self) -> None:
        if math.isnan(self.low) or math.isnan(self.high) or self.low > self.high:
            raise SpectrosynthError(
                f"the guidance interval needs LO <= HI on the log-SNR scale, not {self.low},{self.high}"
            )

    @classmethod
    def parse(cls, text: str) -> GuidanceInterval:
        """'LO,HI' in log-SNR (either may be -inf / inf), or 'full' for (-inf, inf)."""
        if text.strip().lower() in ("full", "all"):
            return cls()
        parts = text.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            low, high = (float(p) for p in parts)
        except ValueError:
            raise SpectrosynthError(
                f"--guidance-interval takes LO,HI on the log-SNR scale (for example -5,3, or -inf,2), or "
                f"full; not {text!r}"
            ) from None
        return cls(low, high)

    @property
    def full(self) -> bool:
        return self.low == -math.inf and self.high == math.inf

    def guides(self, t: float) -> bool:
        """Whether the step at network time t (in [0, 1]) is guided."""
        return self.full or self.low <= logsnr(t) <= self.high

    def __str__(self) -> str:
        return "full" if self.full else f"{self.low:g},{self.high:g}"


FULL = GuidanceInterval()


def as_interval(value: GuidanceInterval | str | tuple[float, float] | None) -> GuidanceInterval:
    """An interval from what the API accepts: None (full), 'LO,HI', (lo, hi) or an interval."""
    if value is None:
        return FULL
    if isinstance(value, GuidanceInterval):
        return value
    if isinstance(value, str):
        return GuidanceInterval.parse(value)
    low, high = value
    return GuidanceInterval(float(low), float(high))


def guided_denoiser(
    conditional: Denoiser,
    both: Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]],
    weight: float,
    interval: GuidanceInterval = FULL,
) -> Denoiser:
    """denoise(z, t) for a sampler: guidance with `weight` between both(z, t) = (eps_c, eps_u) (one batched
    pass of conditional and unconditional rows) at the steps inside `interval`, the conditional prediction
    alone (one pass) at the others and everywhere when weight is 1."""

    def denoise(z: torch.Tensor, t: float) -> torch.Tensor:
        if weight == 1 or not interval.guides(t):
            return conditional(z, t)
        return guide(*both(z, t), weight)

    return denoise
