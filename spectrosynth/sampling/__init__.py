"""Samplers: from noise to a spectrogram, given a (guided) noise predictor.

`SAMPLERS` maps a name to a function `fn(denoise, x, steps, generator, callback=None) -> x0` (see
`base` for the contract). docs/sampling.md says what each one is, what it costs and when to use it.

- `ddpm`: the original ancestral sampler on the trained continuous schedule (the authors' recipe is 1000
  steps with guidance 2);
- `diffusers`: diffusers' discrete DDPM port, bit for bit;
- `unipc` (the default), `dpmpp-2m`, `ddim`, `dpmpp-2m-sde`: fast solvers in continuous time.
"""

from __future__ import annotations

from spectrosynth.constants import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, SAMPLER_STEPS
from spectrosynth.sampling.base import Denoiser, Generators, Sampler, StepCallback, guide, randn, randn_like
from spectrosynth.sampling.ddpm import sample_ddpm
from spectrosynth.sampling.discrete import DDPMSchedule, sample_diffusers
from spectrosynth.sampling.interval import FULL, GuidanceInterval, as_interval, guided_denoiser
from spectrosynth.sampling.solvers import sample_ddim, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_unipc

SAMPLERS: dict[str, Sampler] = {
    "unipc": sample_unipc,
    "dpmpp-2m": sample_dpmpp_2m,
    "ddim": sample_ddim,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "ddpm": sample_ddpm,
    "diffusers": sample_diffusers,
}
#: Samplers that add noise as they go (and so use the generator).
STOCHASTIC = frozenset({"dpmpp-2m-sde", "ddpm", "diffusers"})
DEFAULT_STEPS = SAMPLER_STEPS

__all__ = [
    "DDPMSchedule",
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "FULL",
    "GuidanceInterval",
    "SAMPLERS",
    "STOCHASTIC",
    "Denoiser",
    "Generators",
    "Sampler",
    "StepCallback",
    "as_interval",
    "decoder_passes",
    "guide",
    "guided_denoiser",
    "randn",
    "randn_like",
]


def decoder_passes(
    steps: int,
    guidance: float,
    interval: GuidanceInterval | None = None,
    sampler: Sampler | str = DEFAULT_SAMPLER,
) -> int:
    """Decoder passes per segment: one per step, two for each step guided (w != 1, inside the interval).

    With a partial interval the count depends on where the sampler puts its steps: it is found by running
    the sampler on a 1-element problem with a counting denoiser (cheap: no network).
    """
    if guidance == 1:
        return steps
    interval = interval or FULL
    if interval.full:
        return 2 * steps
    import torch

    sample = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    times: list[float] = []

    def denoise(z: torch.Tensor, t: float) -> torch.Tensor:
        times.append(t)
        return torch.zeros_like(z)

    sample(denoise, torch.zeros(1, 1, 1), steps, torch.Generator().manual_seed(0))
    return sum(2 if interval.guides(t) else 1 for t in times)
