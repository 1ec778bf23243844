"""Optimisers and learning-rate schedules, with the defaults each kind of run gets (training-spec.md §4, §6).

- Adafactor as the original's t5x one: `decay_rate` 0.8 (beta2 = 1 - t^-0.8, so the first step uses g^2),
  factored second moments for matrices, steps scaled by max(1e-3, RMS(parameter)), updates clipped to RMS
  1, no momentum, no weight decay, epsilon 1e-30. torch.optim.Adafactor is this algorithm; the only
  difference, where epsilon 1e-30 enters (a floor on the denominator rather than a term added to g^2), is
  below float32's resolution (tests/test_training_optim.py checks it against a transcription of t5x's).
  The original's learning rate was a constant 1e-3 from step 0 (its warm-up setting had no effect).
- AdamW for LoRA adapters: Adafactor's parameter scaling would make the steps of the zero-initialised B
  matrices vanish (lr * 1e-3).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

OPTIMIZERS = ("adafactor", "adamw")


@dataclass(frozen=True)
class Recipe:
    """What a kind of run uses unless told otherwise."""

    optimizer: str
    lr: float
    warmup: int  # steps of linear warm-up to lr
    grad_clip: float  # max global gradient norm; 0 = none
    max_steps: int


#: From scratch: the original's. Fine-tuning the whole model or the decoder: Adafactor with fresh state at
#: the low end of the spec's 1e-4 .. 1e-3. LoRA: the spec's AdamW 1e-4 with 100 warm-up steps, clipped at 1.
RECIPES = {
    "scratch": Recipe("adafactor", 1e-3, 0, 0.0, 500_000),
    "full": Recipe("adafactor", 1e-4, 0, 0.0, 5_000),
    "decoder": Recipe("adafactor", 1e-4, 0, 0.0, 5_000),
    "lora": Recipe("adamw", 1e-4, 100, 1.0, 5_000),
}


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adafactor":
        return torch.optim.Adafactor(
            params, lr=lr, beta2_decay=-0.8, eps=(1e-15, 1e-3), d=1.0, weight_decay=0.0
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


SCHEDULES = ("constant", "cosine", "linear", "wsd")
DEFAULT_COOLDOWN = 0.2


def cooldown_steps(cooldown: float, total: int) -> int:
    """The length of a `wsd` schedule's decay: `cooldown` steps when it is at least 1, else that share of
    `total` (rounded)."""
    return int(cooldown) if cooldown >= 1 else round(cooldown * total)


def lr_factor(
    k: int, warmup: int, kind: str = "constant", total: int = 0, cooldown: float = DEFAULT_COOLDOWN
):
    """The learning rate of step k (0-based) as a share of the peak: a linear warm-up over `warmup` steps
    (step k uses (k + 1) / warmup), then

    - constant: 1 (the original's);
    - cosine, linear: a decay from 1 at the warm-up's end to 0 at step `total`;
    - wsd (warm-up, stable, decay; Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond
      Fixed Training Durations"): 1 until the last `cooldown` of the run (a share of `total` below 1, else
      steps), then 1 - sqrt(progress) to 0 at step `total`, the "1-sqrt" cool-down that paper found best.
      Until the decay starts it is the constant schedule, so a run started constant can switch to it on
      resume, and the decay can be placed once the length of the run is known.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
    if warmup > 0 and k < warmup:
        return (k + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    if kind == "wsd":
        start = max(warmup, total - cooldown_steps(cooldown, total))
        if k < start:
            return 1.0
        return 1.0 - math.sqrt(min(1.0, (k - start) / (total - start)))
    progress = min(1.0, (k - warmup) / (total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    warmup: int,
    kind: str = "constant",
    total: int = 0,
    cooldown: float = DEFAULT_COOLDOWN,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimizer's learning rate follows `lr_factor` (the peak is the optimizer's lr)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, warmup=warmup, kind=kind, total=total, cooldown=cooldown)
    )


def restore_schedule(schedule: torch.optim.lr_scheduler.LambdaLR, state: dict) -> None:
    """Load a schedule's state (its step) and set the optimizer's learning rate from this schedule's own
    factor at that step: the same value when the schedule is the run's own, and the new schedule's when a
    resumed run switched (constant to wsd, or another cool-down)."""
    schedule.load_state_dict(state)
    k = schedule.last_epoch
    values = [base * fn(k) for base, fn in zip(schedule.base_lrs, schedule.lr_lambdas, strict=True)]
    for group, value in zip(schedule.optimizer.param_groups, values, strict=True):
        group["lr"] = value
    schedule._last_lr = values
