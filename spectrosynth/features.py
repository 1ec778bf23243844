"""Audio -> the model's log-mel spectrogram, computed as the original TensorFlow front end computes it.

The published model hears audio through magenta's `audio_codecs.MelGAN` (music-spectrogram-diffusion,
`audio_codecs.py`, `Audio2Mel`), which is a handful of `tf.signal` calls on 16 kHz mono float audio:

1. Frames of 640 samples (40 ms) every 320 samples (20 ms, 50 frames/s), **not centred**: frame k is
   x[320 k : 320 k + 640]. `pad_end=True`: N samples give F = ceil(N / 320) frames, the signal zero-padded at
   its end to 640 + 320 (F - 1) samples.
2. Each frame times a **periodic** Hann window of 640, w[n] = 0.5 - 0.5 cos(2 pi n / 640), zero-padded at
   its end to 1024 and put through a real FFT: 513 bins, 15.625 Hz apart.
3. The magnitude (not the power) times `tf.signal.linear_to_mel_weight_matrix(128, 513, 16000, 0, 8000)`:
   128 HTK-mel triangles, linear in mel, peak 1, no area normalisation, DC bin ignored (`mel_matrix`).
4. Clipped to [1e-5, 1e8], natural log: (F, 128) values in [ln 1e-5, ln 1e8]; the model's feature range is
   ln 1e-5 .. 4.0 (constants.MIN_LOG_MEL, MAX_LOG_MEL).

`log_mel_spectrogram` does this in float64, 2048 frames (41 s) at a time: an hour of audio needs its float32
output (92 MB) and about 40 MB of work arrays besides. In float64 it equals TensorFlow's float64 graph to
5e-14 in the mel. TensorFlow's own float32 result differs from it by up to 4e-4 in log-mel on test music:
float32 FFT rounding, largest in the quietest bands (tests/test_features.py has the cases).
training-spec.md section 1 has the derivation, the "16 extra frames" of context and the parity tests.

numpy and soxr only, no torch, so that importing this module stays fast.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator

import numpy as np

from spectrosynth.constants import HOP_LENGTH, NUM_MEL_BINS, SAMPLE_RATE
from spectrosynth.errors import SpectrosynthError

FRAME_LENGTH = 2 * HOP_LENGTH  # 640 samples, the STFT window (40 ms)
FFT_SIZE = 1024  # each windowed frame is zero-padded at its end to this length
NUM_SPECTRUM_BINS = FFT_SIZE // 2 + 1  # 513 rFFT bins, 0 .. 8000 Hz in steps of 15.625 Hz
MEL_LOW_HZ = 0.0
MEL_HIGH_HZ = SAMPLE_RATE / 2  # 8000 Hz
MEL_FLOOR = 1e-5  # clip range before the log; ln(MEL_FLOOR) is constants.MIN_LOG_MEL
MEL_CEILING = 1e8

BLOCK_FRAMES = 2048  # frames computed at a time (41 s of audio, about 40 MB of float64 work arrays)
_READ_BLOCK = 1 << 18  # frames read from an audio file at a time
_AUDIO_FORMATS = "WAV, FLAC, OGG or MP3"


# -- the mel matrix ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """The (513, 128) float32 matrix from rFFT magnitudes to mel bands, read-only.

    Equal, bit for bit, to `tf.signal.linear_to_mel_weight_matrix(128, 513, 16000, 0.0, 8000.0)` (TF
    `mel_ops.py`): HTK mel(f) = 1127 ln(1 + f / 700); 130 band edges equally spaced in mel from 0 to
    mel(8000 Hz); band j rises linearly in mel from edge j to 1 at edge j + 1 and falls to 0 at edge j + 2;
    no normalisation; row 0 (the DC bin) is 0. Column j peaks near mel(edge j + 1).

    TensorFlow computes the matrix in float32, so this does too, step for step: a float64 matrix differs by
    up to 1.7e-5. The log is the one TensorFlow's CPU kernels use (Eigen's `plog`, `_log_float32`); a
    correctly rounded float32 log would differ from it in 1 value in 10 and move the weights by up to 1.1e-5.
    """
    f32 = np.float32
    spectrum_mel = _hz_to_mel_float32(_linspace_float32(0.0, MEL_HIGH_HZ, NUM_SPECTRUM_BINS)[1:])[:, None]
    edges = _linspace_float32(
        _hz_to_mel_float32(np.array([MEL_LOW_HZ]))[0],
        _hz_to_mel_float32(np.array([MEL_HIGH_HZ]))[0],
        NUM_MEL_BINS + 2,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (spectrum_mel - lower) / (center - lower)
    falling = (upper - spectrum_mel) / (upper - center)
    weights = np.maximum(f32(0.0), np.minimum(rising, falling))  # (512, 128), float32 throughout
    matrix = np.concatenate([np.zeros((1, NUM_MEL_BINS), f32), weights])
    matrix.flags.writeable = False
    return matrix


def _linspace_float32(start: float, stop: float, num: int) -> np.ndarray:
    """`tf.linspace` in float32: start + i * ((stop - start) / (num - 1)), with both ends exact."""
    start, stop = np.float32(start), np.float32(stop)
    delta = (stop - start) / np.float32(num - 1)
    inner = start + delta * np.arange(1, num - 1, dtype=np.float32)
    return np.concatenate([[start], inner, [stop]]).astype(np.float32)


def _hz_to_mel_float32(hz: np.ndarray) -> np.ndarray:
    """TF `mel_ops._hertz_to_mel` in float32: 1127 ln(1 + f / 700)."""
    hz = np.asarray(hz, np.float32)
    return np.float32(1127.0) * _log_float32(np.float32(1.0) + hz / np.float32(700.0))


def _log_float32(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal float32 values, as TensorFlow's CPU `Log` kernel computes it.

    Eigen's `plog_impl_float`: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then ln(m) from a (3, 3) rational
    approximation r(m - 1) and e ln 2 added, every step rounded to float32 without fused multiply-adds.
    Only `mel_matrix` needs it (values 1 .. 12.5); it matched TensorFlow 2.21 on 100 000 random values.
    """
    f32 = np.float32
    mantissa, exponent = np.frexp(np.asarray(x, f32))  # mantissa in [0.5, 1)
    mantissa, exponent = mantissa.astype(f32), exponent.astype(f32)
    low = mantissa < f32(0.707106781186547524)
    exponent = exponent - low.astype(f32)
    t = (mantissa - f32(1.0)) + np.where(low, mantissa, f32(0.0))  # m - 1 with m in [sqrt(1/2), sqrt(2))
    p = f32(0.18256296349849254)
    for c in (1.0000000190281063, 1.0000000190281136):
        p = p * t + f32(c)
    p = p * t
    q = f32(0.049616247954120038)
    for c in (0.59923249590823520, 1.4999999999999927, 1.0):
        q = q * t + f32(c)
    return (exponent * f32(math.log(2.0)) + p / q).astype(f32)


# -- the spectrogram --------------------------------------------------------------------------------------


def num_frames(num_samples: int) -> int:
    """Frames for `num_samples` samples at 16 kHz: ceil(N / 320) (`pad_end=True`); 81 920 -> 256."""
    return -(-int(num_samples) // HOP_LENGTH)


def log_mel_spectrogram(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The model's (F, 128) float32 log-mel spectrogram of mono audio, F = ceil(N / 320) at 16 kHz.

    `audio` holds float samples (nominally in [-1, 1]; no gain is applied or checked) at `sample_rate` Hz;
    another rate is first resampled to 16 kHz with soxr ("HQ", float32). Frame k covers samples
    [320 k, 320 k + 640) at 16 kHz, centred at (320 k + 320) / 16000 s; the note grid calls it k / 50 s.
    Values are ln(mel magnitude) in [ln 1e-5, ln 1e8]: silence is ln 1e-5 = -11.5129 in every bin, and a
    440 Hz sine of amplitude 0.3 peaks at 4.15. No samples give an empty (0, 128) array.

    To match the training data for a window of the song (the "16 extra frames", training-spec.md section
    1), compute the whole file once and slice it: a chunk's frames equal the whole-file frames wherever the
    chunk was given the 320 samples that follow it.

    Raises ValueError for audio that is not a 1-D array of finite float samples, or a rate that is not
    positive.
    """
    x = _check_audio(audio)
    rate = _check_rate(sample_rate)
    if rate != SAMPLE_RATE and len(x):
        x = _resample(x, rate, SAMPLE_RATE)
    out = np.empty((num_frames(len(x)), NUM_MEL_BINS), np.float32)
    for start, mel in _mel_blocks(x):
        out[start : start + len(mel)] = np.log(np.clip(mel, MEL_FLOOR, MEL_CEILING, out=mel), out=mel)
    return out


def _mel_float64(audio: np.ndarray) -> np.ndarray:
    """(F, 128) float64 mel magnitudes (before the clip and log) of 16 kHz samples, for the parity tests."""
    x = np.asarray(audio)
    frames = [mel for _, mel in _mel_blocks(x)]
    return np.concatenate(frames) if frames else np.zeros((0, NUM_MEL_BINS))


def _mel_blocks(x: np.ndarray, block: int = BLOCK_FRAMES) -> Iterator[tuple[int, np.ndarray]]:
    """(first frame, (n, 128) float64 mel magnitudes) for each `block` frames of 16 kHz samples `x`.

    Each block reads only its own samples, x[320 k0 : 320 k1 + 320], zero-padded at the end where the
    signal stops (TF `shape_ops.frame` with `pad_end=True`).
    """
    window = _hann_window()
    matrix = mel_matrix().astype(np.float64)
    total = num_frames(len(x))
    for k0 in range(0, total, block):
        n = min(block, total - k0)
        span = np.zeros(FRAME_LENGTH + HOP_LENGTH * (n - 1))
        piece = x[HOP_LENGTH * k0 : HOP_LENGTH * k0 + len(span)]
        span[: len(piece)] = piece
        frames = np.lib.stride_tricks.sliding_window_view(span, FRAME_LENGTH)[::HOP_LENGTH]  # (n, 640)
        spectrum = np.abs(np.fft.rfft(frames * window, n=FFT_SIZE))  # (n, 513), zero-padded at the end
        yield k0, spectrum @ matrix


@functools.lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    """`tf.signal.hann_window(640)`, periodic (the TF default), float64: 0.5 - 0.5 cos(2 pi n / 640)."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(FRAME_LENGTH) / FRAME_LENGTH)
    window.flags.writeable = False
    return window


def _check_audio(audio: np.ndarray) -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(
            f"expected mono audio as a 1-D array of samples, got an array of shape {x.shape}; "
            "mix channels down first (e.g. audio.mean(axis=1) for (samples, channels))"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"expected float samples in [-1, 1], got dtype {x.dtype}; "
            "convert integer PCM first (e.g. int16 / 32768)"
        )
    # A sum is finite only if every sample is; float64 sums of float32 samples cannot overflow. Only
    # when it is not finite is the (N,) mask worth making, to tell huge samples from inf and NaN.
    if not math.isfinite(float(np.sum(x, dtype=np.float64))) and not np.isfinite(x).all():
        bad = int(np.argmax(~np.isfinite(x)))
        raise ValueError(f"audio holds a non-finite sample ({x[bad]} at index {bad}); give finite samples")
    return x


def _check_rate(sample_rate: float) -> float:
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    return rate


def _resample(x: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    import soxr

    return soxr.resample(np.asarray(x, np.float32), from_rate, to_rate)  # quality "HQ", float32 out


# -- reading audio files ----------------------------------------------------------------------------------


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as (N,) float32 mono samples at `sample_rate` Hz.

    Reads anything soundfile (libsndfile) reads: WAV, FLAC, OGG/Vorbis/Opus, and MP3 with libsndfile 1.1
    or later. Channels are averaged; another rate is resampled with soxr ("HQ"). Raises SpectrosynthError
    with a one-line message naming the file when it is missing, not audio, damaged or holds no samples.
    """
    import soundfile as sf

    label = os.fspath(path)
    rate = _check_rate(sample_rate)
    try:
        if os.path.isdir(path):
            raise SpectrosynthError(f"{label}: is a folder, not an audio file; give a {_AUDIO_FORMATS} file")
        if os.path.getsize(path) == 0:
            raise SpectrosynthError(f"{label}: the file is empty (0 bytes); it is not an audio file")
        with open(path, "rb"):  # permission problems, with the system's own words
            pass
    except FileNotFoundError as e:
        raise SpectrosynthError(f"{label}: no such file; check the path") from e
    except OSError as e:
        raise SpectrosynthError(f"{label}: cannot be read ({e.strerror or e}); check its permissions") from e

    try:
        with sf.SoundFile(path) as f:
            file_rate = f.samplerate
            mono = _read_mono(f)
    except sf.LibsndfileError as e:
        reason = (e.error_string or str(e)).rstrip(".")
        if e.code == 1:  # SF_ERR_UNRECOGNISED_FORMAT
            raise SpectrosynthError(
                f"{label}: not an audio file soundfile can read ({reason}); convert it to {_AUDIO_FORMATS}"
            ) from e
        raise SpectrosynthError(
            f"{label}: the audio file is damaged or unsupported ({reason}); re-export it as WAV or FLAC"
        ) from e
    if not len(mono):
        raise SpectrosynthError(f"{label}: the audio file holds no samples; give a file with sound in it")
    if file_rate != rate:
        mono = _resample(mono, file_rate, rate)
    return mono


def _read_mono(f) -> np.ndarray:
    """All frames of an open soundfile.SoundFile, channels averaged, float32; read in blocks."""
    mono = np.empty(max(f.frames, 0), np.float32)  # the header's count; some formats give an estimate
    extra, pos = [], 0
    for block in f.blocks(_READ_BLOCK, dtype="float32", always_2d=True):
        mixed = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        fit = min(len(mixed), len(mono) - pos)
        mono[pos : pos + fit] = mixed[:fit]
        pos += fit
        if fit < len(mixed):
            extra.append(mixed[fit:].copy())
    return np.concatenate([mono[:pos], *extra]) if extra else mono[:pos]
