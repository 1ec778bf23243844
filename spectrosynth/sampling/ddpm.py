"""The original sampler: ancestral DDPM on the continuous cosine schedule, as the authors sampled the model.

Hawthorne et al. (2022), code `diffusion_utils.eval_step` / `ddpm_step` / `diffusion_reverse` with the
published settings (1000 steps, x0 clipped to [-1, 1], "large" variance); Ho et al. (2020), Algorithm 2,
in log-SNR form (Kingma et al. 2021, "Variational Diffusion Models", eq. 26-29). Step i = N-1 ... 0 of N:

    1. t = (i + 1) / N, s = i / N; lambda_t, lambda_s from the schedule
    2. x0 = clip((z - sigma_t eps) / alpha_t, -1, 1), eps the guided prediction at (z, t)
    3. r = SNR(t) / SNR(s) = e^(lambda_t - lambda_s)
       mean = r (alpha_s / alpha_t) z + (1 - r) alpha_s x0
       var  = (1 - r) sigma_t^2                                   ("large"; "small" would use sigma_s^2)
    4. z <- mean + sqrt(var) n,  n ~ N(0, I);  at i = 0, return x0 instead

Each step is one network evaluation (two decoder passes with guidance), so the authors' recipe is 2000
decoder passes per 5.12 s segment.
"""

from __future__ import annotations

import math

import torch

from spectrosynth.sampling.base import (
    STATE_DTYPE,
    Denoiser,
    Generators,
    StepCallback,
    predict_x0,
    randn_like,
    report,
    sigmoid,
)
from spectrosynth.sampling.schedule import logsnr


def ddpm_step(
    z: torch.Tensor, x0: torch.Tensor, logsnr_t: float, logsnr_s: float, noise: torch.Tensor
) -> torch.Tensor:
    """One ancestral step t -> s (s < t): a draw from q(z_s | z_t, x0) with the "large" variance."""
    alpha_st = math.sqrt((1.0 + math.exp(-logsnr_t)) / (1.0 + math.exp(-logsnr_s)))  # alpha_s / alpha_t
    alpha_s = math.sqrt(sigmoid(logsnr_s))
    r = math.exp(logsnr_t - logsnr_s)
    one_minus_r = -math.expm1(logsnr_t - logsnr_s)
    mean = r * alpha_st * z + one_minus_r * alpha_s * x0
    var = one_minus_r * sigmoid(-logsnr_t)
    return mean + math.sqrt(var) * noise


def sample_ddpm(
    denoise: Denoiser,
    x: torch.Tensor,
    steps: int,
    generator: Generators | None = None,
    *,
    callback: StepCallback | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """The original ancestral sampler over N = `steps` (1000 as published). Draws one noise per step
    except the last, after that step's network evaluation. Returns x0 (float64)."""
    z = x.to(STATE_DTYPE)
    for step, i in enumerate(reversed(range(steps))):
        t, s = (i + 1) / steps, i / steps
        logsnr_t = logsnr(t)
        x0 = predict_x0(z, denoise(z, t), logsnr_t, clip)
        if i > 0:
            z = ddpm_step(z, x0, logsnr_t, logsnr(s), randn_like(z, generator))
        report(callback, step)
    return x0
