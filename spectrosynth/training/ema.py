"""An exponential moving average (EMA) of the trained weights, with a warm-up of its decay.

After every optimizer step k (k = 1, 2, ... counted from when the average started), each trained parameter's
average moves towards the parameter:

    decay_k = min(max_decay, 1 - (1 + k) ** -power)          (0 for k = 0: the average starts as the weights)
    ema     = decay_k * ema + (1 - decay_k) * weights

the warm-up of k-diffusion's `EMAWarmup` and diffusers' `EMAModel(use_ema_warmup=True)` (inv_gamma 1): early
in a run the average forgets fast, so it follows weights that are still moving a lot, and it averages over
longer and longer stretches as training settles. With power 3/4 (k-diffusion's choice for runs of up to a
few hundred thousand steps) the decay is 0.9944 at step 1,000, 0.9990 at step 10,000 and reaches the
default ceiling 0.9999 at step 215,000; the average then spans about 1 / (1 - decay) steps. Diffusion
models sample markedly better from such an average than from the last weights (Song & Ermon 2020; Karras et
al. 2024 measure it).

Only trainable parameters are averaged (the LoRA adapters in a LoRA run), in float32 whatever the autocast
precision, so the average is the same on every device and precision of the optimizer's arithmetic. A
checkpoint keeps the average and k, so a resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

DEFAULT_MAX_DECAY = 0.9999
DEFAULT_POWER = 0.75


def ema_decay(updates: int, max_decay: float = DEFAULT_MAX_DECAY, power: float = DEFAULT_POWER) -> float:
    """The decay of update number `updates` (1-based); 0 for 0 (the average is the weights)."""
    if updates <= 0:
        return 0.0
    return min(max_decay, 1.0 - (1.0 + updates) ** -power)


class WeightAverage:
    """The EMA of a module's trainable parameters (see the module docstring)."""

    def __init__(
        self, module: torch.nn.Module, max_decay: float = DEFAULT_MAX_DECAY, power: float = DEFAULT_POWER
    ):
        if not 0.0 < max_decay < 1.0:
            raise ValueError(f"the EMA decay must be between 0 and 1 (exclusive), not {max_decay}")
        if power <= 0:
            raise ValueError(f"the EMA warm-up power must be positive, not {power}")
        self.max_decay, self.power = max_decay, power
        self._params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().to(torch.float32).clone() for n, p in self._params.items()}
        self.updates = 0

    @property
    def decay(self) -> float:
        """The decay the next update uses."""
        return ema_decay(self.updates + 1, self.max_decay, self.power)

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (call after each optimizer step)."""
        weight = 1.0 - self.decay
        names = list(self._params)
        averages = [self.average[n] for n in names]
        current = [self._params[n].detach().to(torch.float32) for n in names]
        torch._foreach_lerp_(averages, current, weight)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages, keyed by parameter name (what a checkpoint's ema.safetensors holds)."""
        return {n: t.contiguous() for n, t in self.average.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        missing = sorted(set(self.average) - set(tensors))
        unexpected = sorted(set(tensors) - set(self.average))
        wrong = sorted(
            n for n in self.average.keys() & tensors.keys() if tensors[n].shape != self.average[n].shape
        )  # noqa: E501
        if missing or unexpected or wrong:
            raise ValueError(
                f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another shape, e.g. "
                f"{(missing + unexpected + wrong)[:1]}"
            )
        for n, t in tensors.items():
            self.average[n].copy_(t.to(torch.float32))
        self.updates = updates

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The module's parameters replaced by the average inside the block, restored after (exactly)."""
        saved = {n: p.detach().clone() for n, p in self._params.items()}
        try:
            with torch.no_grad():
                for n, p in self._params.items():
                    p.copy_(self.average[n])
            yield
        finally:
            with torch.no_grad():
                for n, p in self._params.items():
                    p.copy_(saved[n])
