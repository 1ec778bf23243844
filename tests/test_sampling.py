"""The samplers: the schedule, the original sampler against a transcription of its formulas, the fast solvers
against known answers, guidance, noise streams, and the decoder's unconditional branch."""

import math

import numpy as np
import original_sampler as orig
import pytest
import torch

from spectrosynth import models
from spectrosynth.constants import DEFAULT_SAMPLER, SAMPLER_STEPS
from spectrosynth.sampling import SAMPLERS, STOCHASTIC, DDPMSchedule, guide, randn, schedule
from spectrosynth.sampling.base import predict_x0
from spectrosynth.sampling.ddpm import ddpm_step, sample_ddpm
from spectrosynth.sampling.discrete import ddpm_step as discrete_ddpm_step
from spectrosynth.sampling.solvers import T_END, T_START
from spectrosynth.testing import GaussianData, random_state_dict, tiny_configs

# --------------------------------------------------------------------------------------------------------
# The schedule


def test_schedule_values():
    assert schedule.logsnr(0.0) == pytest.approx(20.0, abs=1e-9)
    assert schedule.logsnr(1.0) == pytest.approx(-20.0, abs=1e-9)
    assert schedule.logsnr(0.5) == pytest.approx(0.0, abs=1e-9)
    assert schedule.logsnr(0.001) == pytest.approx(12.855, abs=5e-4)
    assert schedule.logsnr(0.05) == pytest.approx(5.083, abs=5e-4)
    assert schedule.logsnr(0.99) == pytest.approx(-8.301, abs=5e-4)
    for t in (0.0, 1e-3, 0.3, 0.9961, 1.0):
        assert schedule.time_at(schedule.logsnr(t)) == pytest.approx(t, abs=1e-12)
        alpha, sigma = schedule.alpha_sigma(t)
        assert alpha**2 + sigma**2 == pytest.approx(1.0, abs=1e-14)
        assert math.log(alpha**2 / sigma**2) == pytest.approx(schedule.logsnr(t), abs=1e-9)
    assert T_START == pytest.approx(0.99615, abs=1e-5)  # half log-SNR -5.1
    assert schedule.logsnr(T_START) == pytest.approx(-10.2, abs=1e-9)


@pytest.mark.parametrize("grid", schedule.GRIDS)
def test_grids_run_from_start_to_end(grid):
    ts = schedule.time_grid(20, grid, 0.99, 1e-3)
    assert len(ts) == 20 and ts[0] == 0.99 and ts[-1] == 1e-3
    assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
    assert schedule.time_grid(1, grid, 0.99, 1e-3) == [0.99]


def test_grid_spacing():
    lam = [schedule.logsnr(t) for t in schedule.time_grid(11, "logsnr", 1.0, 1e-3)]
    np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 10, rtol=1e-9)
    np.testing.assert_allclose(np.diff(schedule.time_grid(11, "time", 1.0, 1e-3)), -0.0999, rtol=1e-9)
    sigmas = [math.exp(-schedule.logsnr(t) / 2) ** (1 / 7) for t in schedule.time_grid(11, "karras", 1, 1e-3)]
    np.testing.assert_allclose(np.diff(sigmas), (sigmas[-1] - sigmas[0]) / 10, rtol=1e-6)


def test_grid_errors():
    with pytest.raises(ValueError, match="unknown grid"):
        schedule.time_grid(10, "cosine", 1.0, 1e-3)
    with pytest.raises(ValueError, match="t_end < t_start"):
        schedule.time_grid(10, "logsnr", 1e-3, 1.0)
    with pytest.raises(ValueError, match="at least 1"):
        schedule.time_grid(0, "logsnr", 1.0, 1e-3)


def test_registry_and_defaults():
    assert list(SAMPLERS) == list(SAMPLER_STEPS)
    assert DEFAULT_SAMPLER == "unipc" and SAMPLER_STEPS["unipc"] == SAMPLER_STEPS["dpmpp-2m"] == 20
    assert SAMPLER_STEPS["ddpm"] == 1000 and SAMPLER_STEPS["diffusers"] == 100
    assert STOCHASTIC == {"ddpm", "diffusers", "dpmpp-2m-sde"}


# --------------------------------------------------------------------------------------------------------
# The original sampler against the transcription of its formulas (tests/original_sampler.py)


def _step_inputs(dtype, seed=0):
    """(z, eps_cond, eps_uncond, noise): float64 arrays, rounded through `dtype`."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((2, 256, 128)) * scale for scale in (1.0, 1.3, 1.1, 1.0)]
    return [np.asarray(a.astype(dtype), dtype=np.float64) for a in arrays]


@pytest.mark.parametrize("i", [999, 998, 500, 1, 0])
@pytest.mark.parametrize("weight", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("clip", [True, False], ids=["clip", "no-clip"])
@pytest.mark.parametrize("dtype,tolerance", [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["f64", "f32"])
def test_one_ddpm_step_matches_the_original(i, weight, clip, dtype, tolerance):
    """Inputs in float32 stand for float32 network outputs and state; spectrosynth's sampler arithmetic is
    float64 whatever the network's precision, so it holds even where the step divides by alpha = 4.5e-5."""
    z, eps_c, eps_u, noise = _step_inputs(dtype)
    expected = orig.eval_step(i, 1000, z, eps_c, eps_u, noise, weight, clip)
    as_torch = [torch.from_numpy(a.astype(dtype)) for a in (z, eps_c, eps_u, noise)]
    zt, eps = as_torch[0].double(), guide(as_torch[1], as_torch[2], weight)
    t, s = (i + 1) / 1000, i / 1000
    x0 = predict_x0(zt, eps, schedule.logsnr(t), clip)
    ours = x0 if i == 0 else ddpm_step(zt, x0, schedule.logsnr(t), schedule.logsnr(s), as_torch[3])
    assert np.abs(ours.numpy() - expected).max() <= tolerance
    assert ours.dtype == torch.float64


def _tiny_decoder(dtype=torch.float64, max_decoder_noise_time=None):
    """The tiny test model's decoder with fixed random encodings: its two branches (cond, uncond)."""
    config = dict(tiny_configs()["decoder"])
    if max_decoder_noise_time is not None:
        config["max_decoder_noise_time"] = max_decoder_noise_time
    decoder = models.build("decoder", config, random_state_dict("decoder", config, 3)).to(dtype)
    encodings = torch.randn(1, 40, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    kvs = decoder.cross_keys_values(encodings)

    def branches(z: torch.Tensor, t: float):
        films = decoder.conditioning(torch.tensor([t], dtype=torch.float32))
        with torch.inference_mode():
            both = decoder(z.to(dtype), films, kvs, unconditional=True)
        return both.chunk(2)

    return branches


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_a_whole_ddpm_trajectory_matches_the_original(dtype, tolerance):
    """1000 guided steps on a tiny random decoder, the same noise on both sides."""
    branches = _tiny_decoder(dtype)
    weight, steps = 2.0, 1000
    trajectory = []
    g = torch.Generator().manual_seed(7)
    ours = sample_ddpm(
        lambda z, t: guide(*branches(z, t), weight),
        randn((1, 256, 128), g),
        steps,
        g,
        callback=lambda i: trajectory.append(i),
    )
    assert trajectory == list(range(steps))
    # The same stream: the starting noise, then one draw per step but the last.
    g = torch.Generator().manual_seed(7)
    z0 = randn((1, 256, 128), g).double().numpy()
    noises = [randn((1, 256, 128), g).double().numpy() for _ in range(steps - 1)]

    def predict(z, t):
        cond, uncond = branches(torch.from_numpy(z), t)
        return cond.double().numpy(), uncond.double().numpy()

    expected, _ = orig.sample(predict, z0, noises, steps, weight)
    assert np.abs(ours.numpy() - expected).max() <= tolerance
    assert np.abs(expected).max() <= 1.0 and expected.std() > 0.1


def test_ddpm_draws_one_noise_per_step_but_the_last():
    g = torch.Generator().manual_seed(3)
    sample_ddpm(lambda z, t: torch.zeros_like(z), torch.zeros(1, 4), 10, g)
    replay = torch.Generator().manual_seed(3)
    for _ in range(9):
        torch.randn((1, 4), generator=replay)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=replay))


def test_the_diffusers_update_is_the_original_given_its_alphas():
    """diffusers' DDPM step, fed the continuous schedule's alpha-bar at t = (i+1)/N, is the original step:
    the port differs only in its schedule, time and noise (sampling-spec §2.3)."""
    n = 1000
    alphas = torch.tensor(
        [1 / (1 + math.exp(-schedule.logsnr((k + 1) / n))) for k in range(n)], dtype=torch.float64
    )
    ddpm = DDPMSchedule(alphas)
    z, eps_c, _, noise = (torch.from_numpy(a) for a in _step_inputs(np.float64, seed=4))
    for i in (999, 500, 1, 0):
        t = (i + 1) / n
        x0 = predict_x0(z, eps_c, schedule.logsnr(t))
        expected = x0 if i == 0 else ddpm_step(z, x0, schedule.logsnr(t), schedule.logsnr(i / n), noise)
        ours = discrete_ddpm_step(ddpm, eps_c, i, i - 1, z, noise if i > 0 else None)
        assert (ours - expected).abs().max().item() <= 1e-9


# --------------------------------------------------------------------------------------------------------
# Guidance, noise and the unconditional branch


def test_guidance_formula():
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    assert guide(cond, uncond, 2.0).tolist() == [1.5, 5.0]
    assert guide(cond, uncond, 0.0).tolist() == [0.5, -1.0]
    assert guide(cond.bfloat16(), uncond.bfloat16(), 5.0).dtype == torch.float64


def test_noise_streams_per_row():
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    both = randn((2, 3, 4), gens, dtype=torch.float64)
    for row, seed in enumerate((1, 2)):
        alone = torch.randn((1, 3, 4), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(both[row : row + 1], alone.double())
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn((3, 4), gens)


def test_the_unconditional_branch_is_the_decoder_without_cross_attention():
    """Zeroed encodings (all keys visible) give exactly what skipping cross-attention gives, in float32."""
    configs = tiny_configs()
    decoder = models.build("decoder", configs["decoder"], random_state_dict("decoder", configs["decoder"], 3))
    g = torch.Generator().manual_seed(0)
    x, encodings = torch.randn(2, 256, 128, generator=g), torch.randn(2, 60, 32, generator=g)
    films = decoder.conditioning(torch.tensor([0.4]))
    with torch.inference_mode():
        both = decoder(x, films, decoder.cross_keys_values(encodings), unconditional=True)
        cond = decoder(x, films, decoder.cross_keys_values(encodings))
        zeroed = decoder(x, films, decoder.cross_keys_values(torch.zeros_like(encodings)))
    assert both.shape == (4, 256, 128)
    assert torch.equal(both[2:], zeroed)  # exactly 0.0 apart
    torch.testing.assert_close(both[:2], cond, atol=1e-6, rtol=0)
    assert (both[2:] - cond).abs().max() > 0.1  # the branches do differ


def test_the_unconditional_branch_in_float16():
    """diffusers' zeroed masks give NaN in float16 (tests/test_engine_parity.py); skipping the
    cross-attention cannot, and matches float32."""
    configs = tiny_configs()
    x = torch.randn(1, 256, 128, generator=torch.Generator().manual_seed(0))
    encodings = torch.randn(1, 60, 32, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for dtype in (torch.float32, torch.float16):
        net = models.build("decoder", configs["decoder"], random_state_dict("decoder", configs["decoder"], 3))
        net = net.to(dtype)
        films = net.conditioning(torch.tensor([0.4]))
        with torch.inference_mode():
            outputs[dtype] = net(
                x.to(dtype), films, net.cross_keys_values(encodings.to(dtype)), unconditional=True
            )
    assert torch.isfinite(outputs[torch.float16]).all()
    torch.testing.assert_close(outputs[torch.float16].float(), outputs[torch.float32], atol=2e-2, rtol=0)


# --------------------------------------------------------------------------------------------------------
# The fast solvers against known answers


def _gaussian_problem(samples=20000, weight=2.0):
    cond, uncond = GaussianData(0.2, 0.3), GaussianData(0.0, 0.3)
    x = torch.randn(samples, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = cond.guided(uncond, weight).ode_solution(x, T_START, T_END).clamp(-1, 1)
    return (lambda z, t: guide(cond.eps(z, t), uncond.eps(z, t), weight)), x, exact


def _rmse(a, b):
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("name,min_ratio", [("ddim", 1.8), ("dpmpp-2m", 3.0), ("unipc", 5.0)])
def test_solvers_converge_to_the_exact_clipped_solution_at_their_order(name, min_ratio):
    """Guided Gaussian data (w = 2), clipping on: the error against the exact ODE solution falls by at least
    2x (first order), 3x (DPM-Solver++(2M), second order) or 5x (UniPC, third) per doubling from 20 on."""
    denoise, x, exact = _gaussian_problem()
    errors = [_rmse(SAMPLERS[name](denoise, x, n), exact) for n in (20, 40, 80, 160)]
    ratios = [a / b for a, b in zip(errors, errors[1:], strict=False)]
    assert min(ratios) >= min_ratio, (errors, ratios)
    assert errors[0] < {"ddim": 0.05, "dpmpp-2m": 0.01, "unipc": 0.01}[name]


def test_unipc_is_more_accurate_than_dpmpp_2m_at_the_default_cost():
    denoise, x, exact = _gaussian_problem()
    steps = SAMPLER_STEPS[DEFAULT_SAMPLER]
    default = _rmse(SAMPLERS[DEFAULT_SAMPLER](denoise, x, steps), exact)
    assert default < 0.9 * _rmse(SAMPLERS["dpmpp-2m"](denoise, x, steps), exact)


@pytest.mark.parametrize("name,min_ratio", [("ddim", 1.8), ("dpmpp-2m", 3.0), ("unipc", 3.0)])
def test_solver_order_on_a_random_decoder_without_clipping(name, min_ratio):
    """sampling-spec §5.3 item 5: a tiny random decoder in float64, w = 2, clipping off, against a
    2000-step DPM-Solver++(2M) reference; the error falls 2x (DDIM) or about 4x (2M, UniPC) from 20 to 40
    steps. The decoder's time features use the class default scale 2000: with the published 20000 an
    untrained decoder's output oscillates in t faster than 40 steps can follow (a trained one has learned
    a smooth dependence)."""
    branches = _tiny_decoder(torch.float64, max_decoder_noise_time=2000.0)

    def denoise(z, t):
        return guide(*branches(z, t), 2.0)

    x = randn((1, 256, 128), torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = SAMPLERS["dpmpp-2m"](denoise, x, 2000, clip=False)
    errors = [_rmse(SAMPLERS[name](denoise, x, n, clip=False), reference) for n in (20, 40)]
    assert errors[0] / errors[1] >= min_ratio, errors


def test_ddpm_at_1000_steps_reproduces_the_data_distribution():
    """sampling-spec §5.3 item 6: the original sampler on the guided Gaussian gives its mean and std."""
    cond, uncond = GaussianData(0.2, 0.3), GaussianData(0.0, 0.3)
    target = cond.guided(uncond, 2.0)
    g = torch.Generator().manual_seed(0)
    x = randn((4, 256, 200), g, dtype=torch.float64)  # 204,800 values
    out = sample_ddpm(lambda z, t: guide(cond.eps(z, t), uncond.eps(z, t), 2.0), x, 1000, g)
    # The target after clipping to [-1, 1] (the data range), by quadrature.
    grid = torch.linspace(-8, 8, 200_001, dtype=torch.float64)
    weights = torch.exp(-0.5 * grid**2) * (grid[1] - grid[0]) / math.sqrt(2 * math.pi)
    values = (target.mean + target.std * grid).clamp(-1, 1)
    mean = (values * weights).sum().item()
    std = math.sqrt(((values - mean) ** 2 * weights).sum().item())
    standard_error = std / math.sqrt(out.numel())
    assert abs(out.mean().item() - mean) <= 3 * standard_error
    assert abs(out.std().item() - std) <= 2e-3


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_calls_back_once_per_step_and_uses_its_noise(name):
    calls, times = [], []

    def denoise(z, t):
        times.append(t)
        return 0.5 * z

    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    outputs = [
        SAMPLERS[name](denoise, x, 6, torch.Generator().manual_seed(seed), callback=calls.append)
        for seed in (1, 1, 2)
    ]
    assert calls == list(range(6)) * 3 and len(times) == 18
    assert times[:6] == sorted(times[:6], reverse=True) and 0 <= min(times) and max(times) <= 1
    assert all(torch.isfinite(o).all() and o.abs().max() <= 1 for o in outputs)
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(outputs[0], outputs[2]) == (name not in STOCHASTIC)


def test_dynamic_thresholding_is_diffusers_and_the_clip_where_the_data_stays_in_range():
    from diffusers import DPMSolverMultistepScheduler

    from spectrosynth.sampling.base import dynamic_threshold

    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(3, 256, 128, generator=g, dtype=torch.float64)
        * torch.tensor([0.2, 1.3, 4.0])[:, None, None]
    )
    reference = DPMSolverMultistepScheduler(
        thresholding=True, dynamic_thresholding_ratio=0.99, sample_max_value=2.0
    )
    expected = reference._threshold_sample(x.clone())
    got = dynamic_threshold(x, 0.99, 2.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert torch.equal(got[0], x[0])  # inside [-1, 1]: untouched
    assert got[1].abs().max() == 1.0 and (got[1] - x[1].clamp(-1, 1)).abs().max() > 0.05  # not the plain clip
    assert torch.equal(got[2], x[2].clamp(-2.0, 2.0) / 2.0)  # s held at max_value
    z, eps = torch.rand(1, 8, 4, generator=g, dtype=torch.float64), torch.zeros(1, 8, 4, dtype=torch.float64)
    assert torch.equal(predict_x0(z, eps, 20.0, threshold=(0.995, 1.5)), predict_x0(z, eps, 20.0))


@pytest.mark.parametrize("name", ["unipc", "dpmpp-2m", "dpmpp-2m-sde"])
def test_solvers_take_dynamic_thresholding_and_a_later_start(name):
    data = GaussianData(mean=0.4, std=0.05)  # far inside [-1, 1] at every step: thresholding changes nothing
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(**options):
        return SAMPLERS[name](data.eps, x, 12, torch.Generator().manual_seed(3), **options)

    plain = run()
    torch.testing.assert_close(run(threshold=(0.995, 1.5)), plain, rtol=0, atol=1e-6)
    later = run(t_start=schedule.time_at(-6.0))
    assert (later - plain).abs().max() > 1e-4  # another grid
    assert (later - data.mean).abs().mean() < 4 * data.std
