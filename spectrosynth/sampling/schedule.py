"""The noise schedule the model was trained on, and the time grids the samplers walk.

Training drew a continuous time t ~ U[0, 1) and noised the target with the cosine log-SNR schedule

    lambda(t) = -2 ln tan(a t + b),   b = arctan(e^-10),  a = arctan(e^10) - b,

so lambda(0) = +20 and lambda(1) = -20 exactly, and alpha_t^2 = sigmoid(lambda) = cos^2(a t + b),
sigma_t^2 = sigmoid(-lambda) (Hawthorne et al. 2022, code `diffusion_utils.get_logsnr_t`, cosine branch:
Nichol & Dhariwal's cos^2(pi t / 2) without their 0.008 offset, clipped to [-20, 20]). The network reads t
itself, so it can be queried at any real t: continuous-time solvers may place their steps anywhere.

Everything here is float64.
"""

from __future__ import annotations

import math

LOGSNR_MAX = 20.0  # lambda(0)
LOGSNR_MIN = -20.0  # lambda(1)
_B = math.atan(math.exp(-0.5 * LOGSNR_MAX))  # 4.540e-5
_A = math.atan(math.exp(-0.5 * LOGSNR_MIN)) - _B  # 1.5707055

#: The grids a solver can walk, by name. All run from t_start down to t_end, `steps` points in all.
GRIDS = ("logsnr", "time", "karras")
KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5


def logsnr(t: float) -> float:
    """lambda(t) = log(alpha_t^2 / sigma_t^2) of the cosine schedule, t in [0, 1]."""
    return -2.0 * math.log(math.tan(_A * t + _B))


def time_at(logsnr_value: float) -> float:
    """The inverse: the t whose log-SNR is `logsnr_value` (in [-20, 20])."""
    return (math.atan(math.exp(-0.5 * logsnr_value)) - _B) / _A


def alpha_sigma(t: float) -> tuple[float, float]:
    """(alpha_t, sigma_t): the signal and noise scales, z_t = alpha_t x0 + sigma_t eps."""
    lam = logsnr(t)
    return math.sqrt(1.0 / (1.0 + math.exp(-lam))), math.sqrt(1.0 / (1.0 + math.exp(lam)))


def time_grid(steps: int, grid: str, t_start: float, t_end: float) -> list[float]:
    """`steps` times from t_start down to t_end (both included; one step is [t_start]).

    - "logsnr": uniform in log-SNR (DPM-Solver's default for few steps);
    - "time": uniform in t (the original sampler's grid);
    - "karras": Karras et al. (2022) eq. 5 in sigma = sigma_t / alpha_t, rho = 7 (denser near the data).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    if not 0.0 < t_end < t_start <= 1.0:
        raise ValueError(f"need 0 < t_end < t_start <= 1, not t_start={t_start}, t_end={t_end}")
    if steps == 1:
        return [t_start]
    fractions = [i / (steps - 1) for i in range(steps)]
    if grid == "time":
        ts = [t_start + f * (t_end - t_start) for f in fractions]
    elif grid == "logsnr":
        lo, hi = logsnr(t_start), logsnr(t_end)
        ts = [time_at(lo + f * (hi - lo)) for f in fractions]
    elif grid == "karras":
        # sigma = e^(-lambda / 2); interpolate sigma^(1/rho) linearly.
        s_max, s_min = (math.exp(-0.5 * logsnr(t)) ** (1 / KARRAS_RHO) for t in (t_start, t_end))
        ts = [time_at(-2.0 * math.log((s_max + f * (s_min - s_max)) ** KARRAS_RHO)) for f in fractions]
    else:
        raise ValueError(f"unknown grid {grid!r}; use one of {', '.join(GRIDS)}")
    ts[0], ts[-1] = t_start, t_end  # exactly, not through a round trip
    return ts
