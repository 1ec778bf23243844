"""The original sampler's formulas, transcribed into numpy (float64) for the tests to compare against.

From the paper's code, `music_spectrogram_diffusion/models/diffusion/diffusion_utils.py`: `get_logsnr_t`
(cosine branch), `predict_x0_from_eps`, `predict_eps_from_x0`, `diffusion_reverse` and the guidance block of
`eval_step`, written again here step by step and independently of spectrosynth.sampling, so that a mistake
in one does not hide in the other.
"""

from __future__ import annotations

import numpy as np

LOGSNR_MIN, LOGSNR_MAX = -20.0, 20.0


def get_logsnr_t(t):
    b = np.arctan(np.exp(-0.5 * LOGSNR_MAX))
    a = np.arctan(np.exp(-0.5 * LOGSNR_MIN)) - b
    return -2.0 * np.log(np.tan(a * t + b))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def predict_x0_from_eps(z, eps, logsnr):
    return np.sqrt(1.0 + np.exp(-logsnr)) * (z - eps / np.sqrt(1.0 + np.exp(logsnr)))


def predict_eps_from_x0(z, x0, logsnr):
    return np.sqrt(1.0 + np.exp(logsnr)) * (z - x0 / np.sqrt(1.0 + np.exp(-logsnr)))


def diffusion_reverse(x0, z_t, logsnr_s, logsnr_t, logvar_type="large"):
    """Mean and variance of q(z_s | z_t, x0)."""
    alpha_st = np.sqrt((1.0 + np.exp(-logsnr_t)) / (1.0 + np.exp(-logsnr_s)))
    alpha_s = np.sqrt(sigmoid(logsnr_s))
    r = np.exp(logsnr_t - logsnr_s)
    one_minus_r = -np.expm1(logsnr_t - logsnr_s)
    mean = r * alpha_st * z_t + one_minus_r * alpha_s * x0
    var = one_minus_r * sigmoid(-logsnr_t if logvar_type == "large" else -logsnr_s)
    return mean, var


def eval_step(i, num_steps, z_t, eps_cond, eps_uncond, noise, weight, clip_x0=True, sampler="ddpm"):
    """Step i (num_steps - 1 ... 0) of the original loop, given the network's two predictions at
    (z_t, t = (i + 1) / num_steps) and the step's noise. Returns z_s, or x0 at i = 0."""
    t, s = (i + 1) / num_steps, i / num_steps
    logsnr_t, logsnr_s = get_logsnr_t(t), get_logsnr_t(s)
    pred_eps = eps_cond
    pred_x0 = predict_x0_from_eps(z_t, pred_eps, logsnr_t)
    if weight != 1:
        pred_eps = weight * eps_cond + (1.0 - weight) * eps_uncond
        pred_x0 = predict_x0_from_eps(z_t, pred_eps, logsnr_t)
    if clip_x0:
        pred_x0 = np.clip(pred_x0, -1.0, 1.0)
        pred_eps = predict_eps_from_x0(z_t, pred_x0, logsnr_t)
    if i == 0:
        return pred_x0
    if sampler == "ddim":
        return np.sqrt(sigmoid(logsnr_s)) * pred_x0 + np.sqrt(sigmoid(-logsnr_s)) * pred_eps
    mean, var = diffusion_reverse(pred_x0, z_t, logsnr_s, logsnr_t)
    return mean + np.sqrt(var) * noise


def sample(predict, z, noises, num_steps, weight, clip_x0=True, sampler="ddpm"):
    """The whole loop: predict(z, t) -> (eps_cond, eps_uncond); noises[k] is the noise of the k-th step
    (i = num_steps - 1 - k). Returns x0 and every intermediate z."""
    trajectory = [z]
    for k, i in enumerate(reversed(range(num_steps))):
        eps_cond, eps_uncond = predict(z, (i + 1) / num_steps)
        noise = noises[k] if k < len(noises) else None
        z = eval_step(i, num_steps, z, eps_cond, eps_uncond, noise, weight, clip_x0, sampler)
        trajectory.append(z)
    return z, trajectory
