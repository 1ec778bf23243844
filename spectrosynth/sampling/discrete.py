"""The `diffusers` sampler: DDPM as diffusers' port runs the model, from the published scheduler config.

Equivalent to diffusers' `DDPMScheduler` with beta_schedule="squaredcos_cap_v2", variance_type="fixed_large",
clip_sample=True (range 1), prediction_type="epsilon" and timestep_spacing="leading", in the same float32
arithmetic, and drawing its noise in the same order, so a seed gives the reference's result.

Ho et al. (2020), "Denoising Diffusion Probabilistic Models", Algorithm 2; the cosine schedule is from
Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models", eq. 17.

This is not how the model was trained or first sampled (sampler `ddpm` is): the discrete betas carry a 0.008
offset the training schedule does not have, the network is told t = k / 1000 where the sample is noisier,
and "leading" spacing starts short of pure noise (at k = 990 for 100 steps). It is kept, bit for bit, so
that spectrosynth can reproduce diffusers' SpectrogramDiffusionPipeline for the same weights and seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from spectrosynth.sampling.base import Denoiser, Generators, StepCallback, randn_like, report

SUPPORTED = {
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "variance_type": "fixed_large",
    "timestep_spacing": "leading",
}


@dataclass(frozen=True)
class DDPMSchedule:
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float32: alpha-bar_t
    clip_sample_range: float = 1.0
    steps_offset: int = 0

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @classmethod
    @functools.cache
    def published(cls) -> DDPMSchedule:
        """The schedule of google/music-spectrogram-diffusion's scheduler_config.json."""
        return cls(cosine_alphas_cumprod(1000))

    @classmethod
    def from_config(cls, config: dict) -> DDPMSchedule:
        """From a diffusers `scheduler_config.json`; refuses settings this sampler does not implement."""
        for key, value in SUPPORTED.items():
            if config.get(key, value) != value:
                raise ValueError(f"scheduler {key}={config[key]!r} is not supported (only {value!r})")
        if config.get("thresholding") or config.get("trained_betas") or not config.get("clip_sample", True):
            raise ValueError("scheduler thresholding, trained_betas and clip_sample=false are not supported")
        n = int(config.get("num_train_timesteps", 1000))
        return cls(
            cosine_alphas_cumprod(n),
            float(config.get("clip_sample_range", 1.0)),
            config.get("steps_offset", 0),
        )

    def timesteps(self, num_steps: int) -> list[int]:
        """ "Leading" spacing: for 100 steps, 990, 980, ..., 0."""
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"steps must be between 1 and {self.num_train_timesteps}, not {num_steps}")
        ratio = self.num_train_timesteps // num_steps
        return [i * ratio + self.steps_offset for i in reversed(range(num_steps))]


def cosine_alphas_cumprod(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """alpha-bar from betas_t = min(1 - f(t+1)/f(t), 0.999), f(t) = cos^2(((t/n) + 0.008) / 1.008 * pi/2)."""

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor(
        [min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)], dtype=torch.float32
    )
    return torch.cumprod(1.0 - betas, dim=0)


def ddpm_step(
    schedule: DDPMSchedule,
    eps: torch.Tensor,
    t: int,
    prev_t: int,
    x: torch.Tensor,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One reverse step x_t -> x_prev_t (float32). `noise` ~ N(0, I) is added when t > 0."""
    alpha_bar = schedule.alphas_cumprod[t]
    alpha_bar_prev = schedule.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    beta_bar, beta_bar_prev = 1 - alpha_bar, 1 - alpha_bar_prev
    alpha = alpha_bar / alpha_bar_prev  # the effective alpha between the two (possibly distant) steps
    beta = 1 - alpha
    # Predicted x_0 (Ho et al. eq. 15), clipped to the data range.
    x0 = ((x - beta_bar**0.5 * eps) / alpha_bar**0.5).clamp(
        -schedule.clip_sample_range, schedule.clip_sample_range
    )
    # Posterior mean (eq. 7).
    mean = (alpha_bar_prev**0.5 * beta / beta_bar) * x0 + (alpha**0.5 * beta_bar_prev / beta_bar) * x
    if t > 0 and noise is not None:
        mean = mean + beta**0.5 * noise  # "fixed_large" variance: sigma^2 = beta
    return mean


def sample_diffusers(
    denoise: Denoiser,
    x: torch.Tensor,
    steps: int,
    generator: Generators | None = None,
    *,
    callback: StepCallback | None = None,
    schedule: DDPMSchedule | None = None,
) -> torch.Tensor:
    """diffusers' DDPMScheduler loop over `steps` "leading" timesteps k, the network fed k / 1000, in float32.

    Draws one noise per step with k > 0, after that step's network evaluation (diffusers' order). With
    guidance 1 and the same seed this reproduces SpectrogramDiffusionPipeline. Returns x0 (float32).
    """
    schedule = schedule or DDPMSchedule.published()
    timesteps = schedule.timesteps(steps)
    x = x.float()
    for i, t in enumerate(timesteps):
        eps = denoise(x, t / schedule.num_train_timesteps).float()
        prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x = ddpm_step(schedule, eps, t, prev_t, x, randn_like(x, generator) if t > 0 else None)
        report(callback, i)
    return x
