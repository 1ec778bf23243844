"""Fast samplers: solvers of the diffusion ODE (or SDE) in continuous time on the model's own schedule.

All of them step on the data prediction D(z, t) = clip((z - sigma_t eps) / alpha_t, -1, 1), eps the guided
noise prediction (or, with `threshold=(ratio, max_value)`, that prediction dynamically thresholded:
base.dynamic_threshold), and in the half log-SNR lambda = log(alpha / sigma) (DPM-Solver's notation; the
schedule's log-SNR is 2 lambda). They walk a grid t_0 = t_start > t_1 > ... > t_{N-1} = t_end
(schedule.time_grid), evaluating the network once per point, and return the last data prediction
D(z_{N-1}, t_{N-1}): the step to t = 0 is first order, as in the original sampler's last step.
With h_i = lambda_{i+1} - lambda_i > 0:

- ddim: DDIM (Song et al. 2021) = DPM-Solver++(1):
      z_{i+1} = (sigma_{i+1} / sigma_i) z_i - alpha_{i+1} (e^-h - 1) D_i
- dpmpp-2m: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), second order from past values:
      r = h_{i-1} / h_i,  D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},  then the ddim update with D'
- dpmpp-2m-sde: SDE-DPM-Solver++(2M) (the same paper, Appendix; k-diffusion's midpoint form), noise added
  at every step but the last:
      z_{i+1} = (sigma_{i+1}/sigma_i) e^-h z_i + alpha_{i+1} (1 - e^-2h) (D_i + (D_i - D_{i-1}) / (2r))
                + sigma_{i+1} sqrt(1 - e^-2h) n
- unipc: UniPC-2 with B(h) = e^-h - 1 (Zhao et al. 2023, "UniPC", Algorithms 1-2, "bh2", data prediction):
  the predictor is DPM-Solver++(2M); the corrector UniC refines z_i with D(z_i), which is evaluated anyway
  for the next step, so it costs no extra network evaluation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from spectrosynth.sampling.base import (
    STATE_DTYPE,
    Denoiser,
    Generators,
    Sampler,
    StepCallback,
    Threshold,
    predict_x0,
    randn_like,
    report,
)
from spectrosynth.sampling.schedule import alpha_sigma, logsnr, time_at, time_grid

#: The grid and end points the solvers use unless told otherwise (chosen by measurement: docs/sampling.md).
DEFAULT_GRID = "logsnr"
# Start where the half log-SNR is -5.1 (alpha = 0.006), as DPM-Solver does for cosine schedules, not at t = 1
# (alpha = 4.5e-5), where the data prediction divides the network's error by 4.5e-5; end where the original
# sampler makes its last prediction for 1000 steps.
T_START = time_at(-10.2)  # 0.99615
T_END = 1e-3  # lambda = 12.9: sigma / alpha = 1.6e-3


@dataclass(frozen=True)
class _Point:
    t: float  # time fed to the network
    logsnr: float  # the schedule's lambda(t) = 2 * lam
    lam: float  # half log-SNR, log(alpha / sigma)
    alpha: float
    sigma: float


def _points(steps: int, grid: str, t_start: float, t_end: float) -> list[_Point]:
    points = []
    for t in time_grid(steps, grid, t_start, t_end):
        lam = logsnr(t)
        points.append(_Point(t, lam, lam / 2, *alpha_sigma(t)))
    return points


def _dpm_solver_pp(
    denoise: Denoiser,
    z: torch.Tensor,
    points: list[_Point],
    generator: Generators | None,
    callback: StepCallback | None,
    clip: bool,
    threshold: Threshold | None,
    *,
    order: int,
    stochastic: bool,
) -> torch.Tensor:
    """DPM-Solver++ multistep, first or second order, as an ODE or an SDE solver."""
    previous: tuple[torch.Tensor, float] | None = None  # (D_{i-1}, h_{i-1})
    for i, p in enumerate(points):
        d = predict_x0(z, denoise(z, p.t), p.logsnr, clip, threshold)
        if i + 1 < len(points):
            q = points[i + 1]
            h = q.lam - p.lam
            if order == 2 and previous is not None:  # second-order correction from the last two values
                d_prev, h_prev = previous
                d_used = d + (d - d_prev) * (h / (2.0 * h_prev))
            else:
                d_used = d
            if stochastic:
                decay = -math.expm1(-2.0 * h)  # 1 - e^-2h
                z = (q.sigma / p.sigma * math.exp(-h)) * z + (q.alpha * decay) * d_used
                z = z + (q.sigma * math.sqrt(decay)) * randn_like(z, generator)
            else:
                z = (q.sigma / p.sigma) * z - (q.alpha * math.expm1(-h)) * d_used
            previous = (d, h)
        report(callback, i)
    return d


def _unipc(
    denoise: Denoiser,
    z: torch.Tensor,
    points: list[_Point],
    generator: Generators | None,
    callback: StepCallback | None,
    clip: bool,
    threshold: Threshold | None,
) -> torch.Tensor:
    """UniPC-2 (bh2): predictor DPM-Solver++(2M), corrector UniC of the same order."""
    history: list[torch.Tensor] = []  # the last one or two data predictions: the predictor's order
    start = z  # where the last predictor started (after its own correction)
    for i, p in enumerate(points):
        d = predict_x0(z, denoise(z, p.t), p.logsnr, clip, threshold)
        if i + 1 < len(points):
            if history:  # UniC on z_i with D_i; on the last point it would change nothing
                z = _unipc_update(start, points[i - len(history) : i + 1], history, d)
            history = [*history[-1:], d]
            start = z
            z = _unipc_update(z, points[i + 1 - len(history) : i + 2], history)
        report(callback, i)
    return d


def _solver(name: str, core, doc: str) -> Sampler:
    """A solver as a sampler with the common signature, plus its grid options (clip, grid, end points)."""

    def sample(
        denoise: Denoiser,
        x: torch.Tensor,
        steps: int,
        generator: Generators | None = None,
        *,
        callback: StepCallback | None = None,
        clip: bool = True,
        threshold: Threshold | None = None,
        grid: str = DEFAULT_GRID,
        t_start: float = T_START,
        t_end: float = T_END,
    ) -> torch.Tensor:
        points = _points(steps, grid, t_start, t_end)
        return core(denoise, x.to(STATE_DTYPE), points, generator, callback, clip, threshold)

    sample.__name__ = sample.__qualname__ = name
    sample.__doc__ = doc
    return sample


sample_ddim = _solver(
    "sample_ddim",
    functools.partial(_dpm_solver_pp, order=1, stochastic=False),
    "DDIM (deterministic, first order). The generator is not used.",
)
sample_dpmpp_2m = _solver(
    "sample_dpmpp_2m",
    functools.partial(_dpm_solver_pp, order=2, stochastic=False),
    "DPM-Solver++(2M) (deterministic, second order). The generator is not used.",
)
sample_dpmpp_2m_sde = _solver(
    "sample_dpmpp_2m_sde",
    functools.partial(_dpm_solver_pp, order=2, stochastic=True),
    "SDE-DPM-Solver++(2M): stochastic, draws one noise per step but the last.",
)
sample_unipc = _solver(
    "sample_unipc",
    _unipc,
    "UniPC-2 (bh2): predictor DPM-Solver++(2M), corrector UniC of the same order. Deterministic; the "
    "generator is not used.",
)


def _unipc_update(
    z: torch.Tensor, points: list[_Point], history: list[torch.Tensor], d_new: torch.Tensor | None = None
) -> torch.Tensor:
    """One UniPC step of z from points[-2] to points[-1], following diffusers' UniPCMultistepScheduler.

    history: the data predictions at points[:-1] (one or two). Without d_new it is the predictor UniP of
    order len(history); with d_new, the data prediction at points[-1], the corrector UniC of that order.
    """
    p, q = points[-2], points[-1]
    d = history[-1]
    h = q.lam - p.lam
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)  # e^-h - 1
    b_h = math.expm1(hh)  # "bh2"
    z_next = (q.sigma / p.sigma) * z - (q.alpha * h_phi_1) * d
    if len(history) == 2:
        r = (points[0].lam - p.lam) / h  # < 0: the earlier point
        d1 = (history[0] - d) / r
    if d_new is None:  # UniP: order 2 uses rho = 1/2, which makes it DPM-Solver++(2M)
        return z_next if len(history) == 1 else z_next - (q.alpha * b_h * 0.5) * d1
    d1_new = d_new - d
    if len(history) == 1:  # UniC-1
        return z_next - (q.alpha * b_h * 0.5) * d1_new
    # UniC-2: solve [[1, 1], [r, 1]] rho = b, b_k = k! h phi_{k+1}(h) / B(h)
    phi = h_phi_1 / hh - 1.0
    b1 = phi / b_h
    phi = phi / hh - 0.5
    b2 = 2.0 * phi / b_h
    rho0 = (b1 - b2) / (1.0 - r)
    rho1 = b1 - rho0
    return z_next - (q.alpha * b_h) * (rho0 * d1 + rho1 * d1_new)
