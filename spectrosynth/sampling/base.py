"""What every sampler shares: the denoiser it calls, guidance, noise, and the prediction of the clean data.

A sampler is a plain function (k-diffusion style):

    x0 = sampler(denoise, x, steps, generator, callback=None)

- `denoise(z, t)`: the (guided) noise prediction eps for the batch z (B, 256, 128) at time t, the float the
  network is fed (continuous time in (0, 1] for the model's own schedule; k / 1000 for the `diffusers` one);
- `x`: the starting noise, N(0, I), (B, 256, 128);
- `steps`: network evaluations (each a guided step: one or two decoder passes, see `guide`);
- `generator`: a CPU torch.Generator (or one per row of x) for samplers that add noise as they go;
- `callback(i)`: called after step i (0-based).

Samplers of the model's own schedule work in float64 whatever the network's precision: a step is a few
operations on a 256 x 128 array, and float64 keeps the arithmetic exact to the original's formulas even where
they divide by alpha_t = 4.5e-5 (t = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator]
StepCallback = Callable[[int], None]


class Sampler(Protocol):
    def __call__(
        self,
        denoise: Denoiser,
        x: torch.Tensor,
        steps: int,
        generator: Generators | None = None,
        *,
        callback: StepCallback | None = None,
    ) -> torch.Tensor: ...


STATE_DTYPE = torch.float64


def guide(cond: torch.Tensor, uncond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2021): eps = eps_u + w (eps_c - eps_u), in float64.

    w = 1 is the conditional prediction alone; the original model was sampled with w = 2 (its demo) or 5 (its
    training config's default).
    """
    uncond = uncond.to(STATE_DTYPE)
    return uncond + weight * (cond.to(STATE_DTYPE) - uncond)


def randn(
    shape: tuple[int, ...] | torch.Size,
    generator: Generators | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, I) of `shape`, on `device` in `dtype`.

    Drawn in float32 on the CPU, so that a seed gives the same numbers on every device and precision. With
    a sequence of generators (one per row), row i draws from generators[i]: songs rendered together each
    keep their own stream.
    """
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.randn(tuple(shape), generator=generator)
    else:
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        noise = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])
    return noise.to(device, dtype)


def randn_like(x: torch.Tensor, generator: Generators | None) -> torch.Tensor:
    """`randn` shaped like x, on its device and in its dtype."""
    return randn(x.shape, generator, x.device, x.dtype)


def sigmoid(v: float) -> float:
    """Logistic function of a Python float, without overflow for |v| up to the schedule's 20."""
    return 1.0 / (1.0 + math.exp(-v))


Threshold = tuple[float, float]  # dynamic thresholding's (ratio, max_value)


def predict_x0(
    z: torch.Tensor, eps: torch.Tensor, logsnr: float, clip: bool = True, threshold: Threshold | None = None
) -> torch.Tensor:
    """The clean data implied by z and the predicted noise: x0 = (z - sigma eps) / alpha, clipped to the data
    range [-1, 1] (the training targets are clipped there), or with `threshold` (ratio, max_value) brought
    into it by `dynamic_threshold`. Written as the original does it:
    x0 = sqrt(1 + e^-lambda) (z - eps / sqrt(1 + e^lambda)), with lambda the log-SNR."""
    x0 = math.sqrt(1.0 + math.exp(-logsnr)) * (z - eps.to(z.dtype) / math.sqrt(1.0 + math.exp(logsnr)))
    if threshold is not None:
        return dynamic_threshold(x0, *threshold)
    return x0.clamp(-1.0, 1.0) if clip else x0


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.5) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, "Imagen", §2.3; diffusers' `_threshold_sample`): per row,
    s = the `ratio` quantile of |x0|, held to [1, max_value]; x0 is clipped to [-s, s] and divided by s. Where
    the prediction stays in the data range (s = 1) it is the static clip to [-1, 1]; where a weak network's
    prediction overshoots, it is pulled back into range instead of being flattened against its ends."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat.float(), ratio, dim=1).to(x0.dtype).clamp(1.0, max_value)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def report(callback: StepCallback | None, i: int) -> None:
    if callback is not None:
        callback(i)
