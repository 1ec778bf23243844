"""How accurate each sampler is at a given cost: the evidence behind the default sampler, grid and steps.

Accuracy is the distance to the answer the sampler converges to, from the same starting noise, on test
problems whose denoiser is exact, so that the only error left is the sampler's own:

- gaussian: every value x0 ~ N(mean, std^2); guidance between two such (w = 2 and 5). The exact solution of
  the sampling ODE is known in closed form (spectrosynth.testing.GaussianData); clipping to [-1, 1] applies.
- mixture: "spectrogram-like" data: a mixture of 8 (conditional) or 32 (unconditional) random patterns with
  30-60 % of their values at the floor -1 (silence), std 0.08 around them; the exact denoiser of a Gaussian
  mixture, guidance w = 2 and 5. The reference is DPM-Solver++(2M) with 2000 steps from t = 1 to t = 1e-4
  (checked against 4000-step DDIM).
- network (--network): the random base checkpoint on a real segment, float32, w = 2; reference 500-step
  DPM-Solver++(2M). A random network is not a trained one: its noise prediction is not a denoiser, so the
  ODE it defines is rough and these errors say little about the real model. Reported for completeness.

Stochastic samplers (ddpm, dpmpp-2m-sde) do not converge to one answer per starting noise; for them the
Gaussian problem reports how far the mean and standard deviation of 200,000 samples are from the target.

    .venv/bin/python bench/sampling_accuracy.py                  # about 3 minutes
    .venv/bin/python bench/sampling_accuracy.py --network        # adds about 20 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch

from spectrosynth.sampling import SAMPLERS, guide, schedule
from spectrosynth.sampling.solvers import DEFAULT_GRID, T_END, T_START
from spectrosynth.testing import GaussianData

ROOT = Path(__file__).resolve().parents[1]
T_DPM = schedule.time_at(-10.2)  # DPM-Solver's start for cosine schedules: half log-SNR -5.1
DETERMINISTIC = ("ddim", "dpmpp-2m", "unipc")


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


class Gaussian:
    """Guided Gaussian data; error against the exact clipped ODE solution from the sampler's start."""

    def __init__(self, cond: GaussianData, uncond: GaussianData, weight: float, samples: int = 20000):
        self.cond, self.uncond, self.weight = cond, uncond, weight
        self.target = cond.guided(uncond, weight)
        self.x = torch.randn(samples, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.name = f"gaussian mean {self.target.mean:g} std {self.target.std:g} w={weight:g}"

    def denoise(self, z: torch.Tensor, t: float) -> torch.Tensor:
        return guide(self.cond.eps(z, t), self.uncond.eps(z, t), self.weight)

    def error(self, out: torch.Tensor, t_start: float) -> float:
        return rmse(out, self.target.ode_solution(self.x, t_start).clamp(-1, 1))


class Mixture:
    """Guided Gaussian mixtures of spectrogram-like patterns; error against a 2000-step reference."""

    def __init__(self, weight: float, dims: int = 256 * 32, batch: int = 16, std: float = 0.08):
        g = torch.Generator().manual_seed(1)

        def patterns(k: int) -> torch.Tensor:
            means = torch.rand((k, dims), generator=g, dtype=torch.float64) * 1.3 - 0.5
            floor = torch.rand((k, 1), generator=g, dtype=torch.float64) * 0.3 + 0.3  # 30-60 % silent
            means[torch.rand((k, dims), generator=g, dtype=torch.float64) < floor] = -1.0
            return means

        self.cond = patterns(8)
        self.uncond = torch.cat([self.cond, patterns(24)])
        self.std, self.weight = std, weight
        self.x = torch.randn((batch, dims), generator=g, dtype=torch.float64)
        self.name = f"mixture w={weight:g}"
        self.reference = SAMPLERS["dpmpp-2m"](self.denoise, self.x, 2000, t_start=1.0, t_end=1e-4)
        check = SAMPLERS["ddim"](self.denoise, self.x, 4000, t_start=1.0, t_end=1e-4)
        self.reference_error = rmse(self.reference, check)

    def _eps(self, means: torch.Tensor, z: torch.Tensor, t: float) -> torch.Tensor:
        alpha, sigma = schedule.alpha_sigma(t)
        var = alpha**2 * self.std**2 + sigma**2
        distance = torch.cdist(z, alpha * means).pow(2)  # (B, K)
        weights = torch.softmax(-distance / (2 * var), dim=1)
        center = weights @ means
        x0 = center + (alpha * self.std**2 / var) * (z - alpha * center)
        return (z - alpha * x0) / sigma

    def denoise(self, z: torch.Tensor, t: float) -> torch.Tensor:
        return guide(self._eps(self.cond, z, t), self._eps(self.uncond, z, t), self.weight)

    def error(self, out: torch.Tensor, t_start: float) -> float:
        return rmse(out, self.reference)


class Network:
    """The random base checkpoint, float32, on segment 6 of example_complex.mid with a random context."""

    def __init__(self, checkpoint: Path, reference_steps: int = 500):
        import numpy as np

        from spectrosynth import Synthesizer
        from spectrosynth.midi import read_midi
        from spectrosynth.testing import write_checkpoint
        from spectrosynth.tokens import tokenize

        if not (checkpoint / "model_index.json").exists():
            write_checkpoint(checkpoint, "base", seed=0)
        synth = Synthesizer.from_pretrained(checkpoint, device="cpu", dtype="float32")
        midi = ROOT / "tests" / "data" / "midi" / "note-seq" / "example_complex.mid"
        tokens = [s.tokens for s in tokenize(read_midi(midi))][5]
        context = np.random.default_rng(0).uniform(-11, 4, (256, 128)).astype(np.float32)
        self.denoise = synth.segment_denoiser(tokens, context, guidance=2.0)
        self.x = torch.randn((1, 256, 128), generator=torch.Generator().manual_seed(0))
        self.name = "random base network w=2 (log-mel units)"
        self.reference = SAMPLERS["dpmpp-2m"](self.denoise, self.x, reference_steps, t_start=1.0)
        self.reference_error = math.nan

    def error(self, out: torch.Tensor, t_start: float) -> float:
        return 7.756 * rmse(out, self.reference)  # feature units -> log-mel units (range 15.5)


def grid_table(problems, steps=(10, 20, 40)) -> None:
    print("\n## Grid and end points (RMSE at 10 / 20 / 40 steps)\n")
    header = ["sampler", "grid", "t_start", "t_end", *[p.name for p in problems]]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in ("dpmpp-2m", "unipc", "ddim"):
        for grid in schedule.GRIDS:
            for t_start in (1.0, T_DPM):
                for t_end in (1e-3, 1e-2):
                    cells = []
                    for p in problems:
                        errs = [
                            p.error(
                                SAMPLERS[name](p.denoise, p.x, n, grid=grid, t_start=t_start, t_end=t_end),
                                t_start,
                            )  # fmt: skip
                            for n in steps
                        ]
                        cells.append(" / ".join(f"{e:.1e}" for e in errs))
                    print(f"| {name} | {grid} | {t_start:.4f} | {t_end:g} | " + " | ".join(cells) + " |",
                          flush=True)  # fmt: skip


def sampler_table(problems, steps=(5, 8, 10, 15, 20, 25, 30, 40, 50, 80)) -> None:
    print(
        f"\n## Samplers on the default grid ({DEFAULT_GRID}, t {T_START:.4f} -> {T_END:g}): RMSE by steps\n"
    )
    header = ["problem", "sampler", *map(str, steps)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for p in problems:
        for name in DETERMINISTIC:
            errs = [p.error(SAMPLERS[name](p.denoise, p.x, n), T_START) for n in steps]
            print(f"| {p.name} | {name} | " + " | ".join(f"{e:.1e}" for e in errs) + " |", flush=True)


def stochastic_table(steps=(20, 50, 100, 200, 1000), samples=200_000) -> None:
    cond, uncond = GaussianData(0.2, 0.3), GaussianData(0.0, 0.3)
    target = cond.guided(uncond, 2.0)
    # The clipped target's mean and std, by quadrature on a fine grid.
    x = torch.linspace(-8, 8, 400_001, dtype=torch.float64)
    density = torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi) * (x[1] - x[0])
    values = (target.mean + target.std * x).clamp(-1, 1)
    mean = (values * density).sum().item()
    std = math.sqrt(((values - mean) ** 2 * density).sum().item())
    error = std / math.sqrt(samples)
    print(f"\n## Stochastic samplers: {samples} samples of the guided Gaussian (mean {mean:.4f}, "
          f"std {std:.4f} after clipping); standard error of the mean {error:.1e}\n")  # fmt: skip
    print("| sampler | steps | mean error | std error |\n|---|---|---|---|")
    for name in ("dpmpp-2m-sde", "ddpm"):
        for n in steps:
            g = torch.Generator().manual_seed(0)
            x0 = torch.randn((samples,), generator=g, dtype=torch.float64)

            def denoise(z, t):
                return guide(cond.eps(z, t), uncond.eps(z, t), 2.0)

            out = SAMPLERS[name](denoise, x0, n, g)
            print(f"| {name} | {n} | {out.mean().item() - mean:+.1e} | {out.std().item() - std:+.1e} |",
                  flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", action="store_true", help="also the random base network (slow)")
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/spectrosynth-base-random"))
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"machine: {platform.machine()}, {platform.processor() or platform.platform()}; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")  # fmt: skip
    began = time.perf_counter()
    problems = [
        Gaussian(GaussianData(0.2, 0.3), GaussianData(0.0, 0.3), 2.0),
        Gaussian(GaussianData(-0.4, 0.25), GaussianData(0.1, 0.25), 2.0),
        Gaussian(GaussianData(0.2, 0.3), GaussianData(0.0, 0.3), 5.0),
        Mixture(2.0),
        Mixture(5.0),
    ]
    for p in problems:
        if isinstance(p, Mixture):
            print(f"{p.name}: reference checked against 4000-step DDIM: RMSE {p.reference_error:.1e}")
    if args.network:
        problems.append(Network(args.checkpoint))
    grid_table(problems)
    sampler_table(problems)
    stochastic_table()
    print(f"\n({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
