"""A Griffin-Lim spectrogram inverter for the model's log-mel: audio from models that have no published
SoundStream inverter (`melgan/model.onnx`), such as those trained with `spectrosynth train` from scratch.

It inverts the original's front end (spectrosynth.features) step by step:

1. exp of the log-mel: mel-band magnitudes (the front end's mel is of the STFT *magnitude*, not power);
2. back to 513 linear-frequency magnitudes: the non-negative least-squares solution of S @ mel_matrix() =
   mel, by a few FISTA iterations from the pseudo-inverse's solution clamped to >= 0. The pseudo-inverse's
   (minimum-norm) spectrum has the mel exactly but goes negative, mostly above 1 kHz where a band spans many
   bins; clamped, its mel is 0.05 off in log-mel and its audio re-analyses 38 % worse after Griffin-Lim
   (docs/performance.md, "Griffin-Lim vocoder");
3. phases by fast Griffin-Lim (Perraudin, Balazs and Sondergaard 2013, momentum 0.99, as librosa and
   torchaudio implement it): alternately impose the magnitudes and make the spectrogram consistent (the
   STFT of its own least-squares inverse), with the front end's exact STFT: frame k is x[320 k : 320 k +
   640] (not centred), a periodic Hann window of 640, zero-padded at its end to a 1024-point FFT, and the
   signal zero-padded at its end (`pad_end=True`). So F frames give F * 320 samples, aligned as the ONNX
   vocoder's are, and the re-analysed mel of the output is what the iterations bring close to the input.

The inverse STFT is an overlap-add written here, not torch.istft: the front end's frames are not centred, so
the first samples are covered by one frame whose window starts at 0, which torch.istft refuses (its
"window overlap add" check). With a hop of half the window, overlap-add is two shifted sums of half-frames.
Where only that first frame covers the signal (its first 20 ms), the least-squares division by the
window's squared sum would amplify phase errors by up to 1 / w(n); the divisor is floored at the
steady-state minimum of that sum (0.5), which fades the first 13 ms in instead.

Deterministic: the initial phase is zero in every bin, so the same spectrogram gives the same audio. It is
also local: each iteration lets a frame's phase depend on one more frame either side, so with fewer
iterations than the context `StreamingVocoder` gives it (`GriffinLimVocoder.context`, 64 frames), vocoding
a song in chunks gives exactly what vocoding it whole gives (tests/test_griffin_lim.py). A random initial
phase re-analyses 5 % closer at the default 32 iterations, but would make each chunk's audio depend on
where the chunk starts.

Griffin-Lim is much lower quality than a trained inverter (phasey, "metallic" audio): use it when the model
has none.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from spectrosynth.constants import HOP_LENGTH, NUM_MEL_BINS
from spectrosynth.features import FFT_SIZE, FRAME_LENGTH, MEL_CEILING, MEL_FLOOR, mel_matrix

# docs/performance.md, "Griffin-Lim vocoder": the knee of the error curve, and below the 64 frames of context
# that StreamingVocoder gives each chunk.
DEFAULT_ITERATIONS = 32
NNLS_ITERATIONS = 30  # FISTA iterations, mel -> magnitude: the final error within 2 % of 100's (docs)
DEFAULT_MOMENTUM = 0.99  # Perraudin et al. 2013; librosa's and torchaudio's default
LOG_MEL_FLOOR, LOG_MEL_CEILING = math.log(MEL_FLOOR), math.log(MEL_CEILING)  # the front end's clip range
ENVELOPE_FLOOR = 0.5  # the overlap-added squared window's minimum where two frames cover a sample


@functools.lru_cache(maxsize=4)
def _matrices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """features.mel_matrix() (513, 128), its transpose and its pseudo-inverse (128, 513), float32 on
    `device`, and the Lipschitz constant of the least-squares gradient (the largest squared singular
    value)."""
    matrix = mel_matrix().astype(np.float64)
    inverse = np.linalg.pinv(matrix)
    lipschitz = float(np.linalg.norm(matrix, 2) ** 2)
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_tensor(matrix), as_tensor(matrix.T), as_tensor(inverse), lipschitz


def mel_to_magnitude(log_mel: torch.Tensor, iterations: int = NNLS_ITERATIONS) -> torch.Tensor:
    """(..., F, 128) natural-log mel -> (..., F, 513) non-negative linear-frequency STFT magnitudes S whose
    mel S @ mel_matrix() is closest to exp(log_mel): non-negative least squares, by `iterations` of FISTA
    (accelerated projected gradient) from the clamped pseudo-inverse (iterations=0: that alone).

    Log-mel values outside the front end's clip range (which it never gives) are first clipped to it.
    """
    matrix, transposed, inverse, lipschitz = _matrices(log_mel.device)
    mel = torch.exp(log_mel.float().clamp(min=LOG_MEL_FLOOR, max=LOG_MEL_CEILING))
    magnitude = (mel @ inverse).clamp_(min=0.0)
    target = mel @ transposed / lipschitz  # the gradient's constant part, times the step 1 / L
    point, t = magnitude, 1.0
    for _ in range(iterations):
        step = (point - (point @ matrix) @ transposed / lipschitz + target).clamp_(min=0.0)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        point = step + ((t - 1.0) / t_next) * (step - magnitude)
        magnitude, t = step, t_next
    return magnitude


class GriffinLimVocoder:
    """Log-mel -> audio by Griffin-Lim, with the same call as `Vocoder`: (frames, 128) or (batch, frames,
    128) float32 log-mel -> (frames * 320,) or (batch, frames * 320) float32 audio at 16 kHz.

    iterations: Griffin-Lim iterations (more is closer and slower: docs/performance.md); below the
    StreamingVocoder context (64 frames), chunked vocoding equals whole-song vocoding exactly.
    device: where torch computes it ("cpu", "cuda", "cuda:N"). momentum: fast Griffin-Lim's (0: plain
    Griffin-Lim).
    nnls_iterations: FISTA iterations of the mel -> magnitude step (0: the clamped pseudo-inverse only).
    """

    name = "griffin-lim"
    # Frames StreamingVocoder adds on either side of a chunk: more than the iterations (each reaches one frame
    # further), so chunked vocoding equals whole vocoding up to 63 iterations.
    context = 64

    def __init__(
        self,
        iterations: int = DEFAULT_ITERATIONS,
        device: str = "cpu",
        momentum: float = DEFAULT_MOMENTUM,
        nnls_iterations: int = NNLS_ITERATIONS,
    ):
        if iterations < 0 or nnls_iterations < 0:
            raise ValueError(f"iterations must be >= 0, not {min(iterations, nnls_iterations)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), not {momentum}")
        self.iterations, self.momentum = int(iterations), float(momentum)
        self.nnls_iterations = int(nnls_iterations)
        self.device = torch.device(device)
        # What ran it, for code that reports Vocoder.providers (the onnxruntime execution providers).
        self.providers = [f"torch ({self.device})"]
        hann = torch.hann_window(FRAME_LENGTH, periodic=True, dtype=torch.float64)  # features._hann_window
        self._window = hann.float().to(self.device)
        self._fft_window = torch.nn.functional.pad(self._window, (0, FFT_SIZE - FRAME_LENGTH))
        # The overlap-added squared window, per 320-sample block: block 0 is covered by frame 0's first half
        # only, every later block by one frame's first half and the previous frame's second half.
        first, second = hann[:HOP_LENGTH] ** 2, hann[HOP_LENGTH:] ** 2
        steady = (first + second).clamp(min=ENVELOPE_FLOOR)
        self._divisor = torch.stack([first.clamp(min=ENVELOPE_FLOOR), steady]).float().to(self.device)

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """mel (frames, 128) or (batch, frames, 128) log-mel -> audio (frames * 320,) or (batch, samples)."""
        batched = mel.ndim == 3
        features = np.asarray(mel if batched else mel[None], dtype=np.float32)
        if features.ndim != 3 or features.shape[-1] != NUM_MEL_BINS:
            raise ValueError(f"expected {NUM_MEL_BINS} mel bins, got an array of shape {mel.shape}")
        batch, frames = features.shape[:2]
        if frames == 0:
            audio = np.zeros((batch, 0), np.float32)
        else:
            with torch.inference_mode():
                log_mel = torch.tensor(features, device=self.device)  # a copy: `mel` may be read-only
                audio = self.invert(mel_to_magnitude(log_mel, self.nnls_iterations)).cpu().numpy()
        return audio if batched else audio[0]

    def invert(self, magnitude: torch.Tensor) -> torch.Tensor:
        """(B, F, 513) linear-frequency magnitudes -> (B, F * 320) audio, by fast Griffin-Lim.

        As librosa.griffinlim: c_n = t_n + a (t_n - t_{n-1}) is taken as t_n - a / (1 + a) t_{n-1}, the same
        phase (only its scale differs), then only the phase of c_n is kept."""
        angles = torch.ones_like(magnitude, dtype=torch.complex64)  # zero phase: deterministic and local
        previous, alpha = None, self.momentum / (1.0 + self.momentum)
        for _ in range(self.iterations):
            rebuilt = self.stft(self.istft(magnitude * angles))
            accelerated = rebuilt if previous is None else torch.sub(rebuilt, previous, alpha=alpha)
            angles = torch.sgn(accelerated)  # z / |z| (0 where z is 0)
            previous = rebuilt
        return self.istft(magnitude * angles)

    def stft(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, F * 320) -> (B, F, 513): the front end's STFT (features._mel_blocks), in torch.

        The window zero-padded to the FFT size times 1024-sample frames is the 640-sample windowed frame
        zero-padded at its end, as the front end has it; one rFFT of those took a quarter of the time of
        torch.stft, or of an rFFT of the 640-sample frames told to pad them."""
        padded = torch.nn.functional.pad(audio, (0, HOP_LENGTH + FFT_SIZE - FRAME_LENGTH))  # pad_end, FFT
        return torch.fft.rfft(padded.unfold(-1, FFT_SIZE, HOP_LENGTH) * self._fft_window)

    def istft(self, spectrum: torch.Tensor) -> torch.Tensor:
        """(B, F, 513) -> (B, F * 320): the least-squares signal whose `stft` is closest to `spectrum`
        (Griffin and Lim 1984), cut to the F * 320 samples the front end would analyse as F frames."""
        frames = torch.fft.irfft(spectrum, n=FFT_SIZE)[..., :FRAME_LENGTH] * self._window  # (B, F, 640)
        halves = frames.unflatten(-1, (2, HOP_LENGTH))  # (B, F, 2, 320)
        blocks = halves[..., 0, :].clone()  # block k: frame k's first half ...
        blocks[..., 1:, :] += halves[..., :-1, 1, :]  # ... plus frame k - 1's second half
        blocks[..., 0, :] /= self._divisor[0]
        blocks[..., 1:, :] /= self._divisor[1]
        return blocks.flatten(-2)
