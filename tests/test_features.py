"""spectrosynth.features: the mel front end, checked against TensorFlow's tf.signal (magenta's Audio2Mel).

The TF tests (marker `tf`) need `tensorflow-cpu==2.21.0`, a test-only reference that spectrosynth never
imports; without it they skip. training-spec.md section 1 defines the cases (a)-(d).
"""

from __future__ import annotations

import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from spectrosynth import features
from spectrosynth.constants import MIN_LOG_MEL, NUM_MEL_BINS
from spectrosynth.errors import SpectrosynthError
from spectrosynth.features import load_audio, log_mel_spectrogram, mel_matrix, num_frames

SR = 16_000
SEGMENT = 81_920  # samples in a 256-frame model window
EXTRA_FRAMES = 16  # MelGAN.additional_frames_for_encoding
REAL_AUDIO = sorted((Path(__file__).parent / "data" / "audio").glob("*.flac"))
REAL_AUDIO_SECONDS = 30  # at most this much of each file goes through TF
FLOOR = np.float32(MIN_LOG_MEL)


def sine(freq: float = 440.0, seconds: float = 1.0, amp: float = 0.5, rate: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def music(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Decaying harmonic notes (8 partials each, onsets overlapping) over a little noise; peak 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    x = 1e-3 * rng.standard_normal(len(t))
    for onset, f0, decay in ((0.0, 220.0, 1.5), (0.4, 329.6, 3.0), (1.1, 523.3, 2.0), (1.9, 146.8, 1.0)):
        age = np.maximum(t - onset, 0.0)
        envelope = np.where(t >= onset, np.minimum(age / 0.005, 1.0) * np.exp(-decay * age), 0.0)
        for h in range(1, 9):
            if h * f0 < SR / 2:
                x += envelope * np.sin(2 * np.pi * h * f0 * age + h) / h
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def clipped_sine(seconds: float = 2.0) -> np.ndarray:
    """A full-scale 440 Hz sine driven 3.5 dB into hard clipping: odd harmonics up to Nyquist."""
    return np.clip(sine(440.0, seconds, 1.5), -1.0, 1.0)


def amplitude(x: np.ndarray, freq: float, rate: int = SR) -> float:
    """Amplitude of the `freq` component of `x` (a whole number of periods assumed)."""
    t = np.arange(len(x)) / rate
    return float(2 * np.abs(np.mean(x * np.exp(-2j * np.pi * freq * t))))


# -- the TensorFlow reference -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    # Before the import: no C++ log lines, and plain Eigen kernels instead of oneDNN's, whose summation
    # order depends on the CPU (and whose banner ignores TF_CPP_MIN_LOG_LEVEL).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    tf = pytest.importorskip("tensorflow")
    try:
        tf.config.set_visible_devices([], "GPU")  # CPU kernels only (tensorflow-cpu has no others anyway)
    except RuntimeError:  # devices already initialised by an earlier import
        pass
    return tf


def tf_matrix(tf):
    return tf.signal.linear_to_mel_weight_matrix(128, 513, 16000, 0.0, 8000.0)


def tf_mel(tf, x: np.ndarray, dtype) -> np.ndarray:
    """Audio2Mel before the clip and log, in `dtype`; the mel matrix is TF's float32 one, cast (see (b))."""
    w = tf.cast(tf_matrix(tf), dtype)
    spectrum = tf.signal.stft(
        tf.constant(x, dtype), 640, 320, 1024, window_fn=tf.signal.hann_window, pad_end=True
    )
    return tf.matmul(tf.abs(spectrum), w).numpy()


def tf_log_mel(tf, x: np.ndarray) -> np.ndarray:
    """Audio2Mel, float32: log(clip(|stft(x)| @ W, 1e-5, 1e8))."""
    return tf.math.log(tf.clip_by_value(tf_mel(tf, x, tf.float32), 1e-5, 1e8)).numpy()


# (a) the matrix


@pytest.mark.tf
def test_mel_matrix_equals_tensorflows(tf):
    ours, theirs = mel_matrix(), tf_matrix(tf).numpy()
    assert ours.shape == theirs.shape == (513, 128)
    assert ours.dtype == np.float32
    assert not theirs[0].any() and not ours[0].any()
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)  # measured: bit-equal with TF 2.21


# (b) float64 semantics: framing, padding, window, FFT length, magnitude and matmul, without float32 noise


def _signal(kind: str, n: int) -> np.ndarray:
    if kind == "noise":
        return 0.3 * np.random.default_rng(n).standard_normal(n)
    if kind == "sines":
        t = np.arange(n) / SR
        return 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3517.0 * t + 1.0)
    return np.zeros(n)


@pytest.mark.tf
@pytest.mark.parametrize("kind", ["noise", "sines", "silence"])
@pytest.mark.parametrize("n", [1, 319, 320, 321, 640, 81_920, 87_040])
def test_float64_mel_equals_tensorflow_float64(tf, kind, n):
    x = _signal(kind, n)
    # TF's matrix is float32 even in a float64 graph of Audio2Mel; (a) checks it, so both sides share it here.
    theirs = tf_mel(tf, x, tf.float64)
    ours = features._mel_float64(x)
    assert ours.shape == theirs.shape == (num_frames(n), NUM_MEL_BINS)
    np.testing.assert_allclose(ours, theirs, atol=1e-9, rtol=0)
    if kind != "silence" and n > 1:  # a lone sample 0 meets the window's zero w[0]: silence
        assert theirs.max() > 0.1  # a real comparison, not of two near-zero arrays


# (c) float32 against float32: what the original computed, on music-like audio


REAL_CASES = [pytest.param(p, id=p.name) for p in REAL_AUDIO] or [
    pytest.param(None, id="no-real-audio", marks=pytest.mark.skip(reason="no tests/data/audio/*.flac yet"))
]


def _compare_float32(tf, x: np.ndarray, everywhere: bool) -> None:
    theirs_mel = tf_mel(tf, x, tf.float32)
    theirs = tf_log_mel(tf, x)
    ours = log_mel_spectrogram(x)
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape == (num_frames(len(x)), NUM_MEL_BINS)
    np.testing.assert_allclose(
        theirs_mel, features._mel_float64(x), rtol=1e-5, atol=1e-6 * max(float(theirs_mel.max()), 1e-5)
    )
    loud = theirs_mel > 1e-4  # below, the 1e-5 floor's log amplifies float32 FFT rounding
    if everywhere:
        assert loud.all()
    np.testing.assert_allclose(ours[loud], theirs[loud], atol=1e-3, rtol=0)


@pytest.mark.tf
def test_float32_music_matches_tensorflow_everywhere(tf):
    _compare_float32(tf, music(3.0), everywhere=True)


@pytest.mark.tf
def test_float32_clipped_full_scale_sine_matches_tensorflow(tf):
    _compare_float32(tf, clipped_sine(2.0), everywhere=False)


@pytest.mark.tf
def test_float32_silence_matches_tensorflow(tf):
    x = np.zeros(SR, np.float32)
    theirs, ours = tf_log_mel(tf, x), log_mel_spectrogram(x)
    assert ours.shape == theirs.shape == (50, NUM_MEL_BINS)
    np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=0)  # TF's float32 log(1e-5): 1 ulp (9.5e-7) off
    assert (ours == FLOOR).all()


@pytest.mark.tf
@pytest.mark.parametrize("path", REAL_CASES)
def test_float32_real_audio_matches_tensorflow(tf, path):
    x = load_audio(path)[: REAL_AUDIO_SECONDS * SR]
    _compare_float32(tf, x, everywhere=False)


# (d) the "16 extra frames": a chunk encoded with 16 frames of what follows equals the whole-file slice


def _chunks(x: np.ndarray, extra_frames: int):
    """(start frame, samples) of each 256-frame chunk of `x`, with `extra_frames` frames of what follows."""
    for start in range(0, len(x), SEGMENT):
        yield start // 320, x[start : start + SEGMENT + extra_frames * 320]


@pytest.mark.tf
def test_tensorflow_chunks_with_16_extra_frames_equal_the_whole_file_slice(tf):
    x = music(12.0, seed=1)  # 2 full chunks and a 107-frame tail
    whole = log_mel_spectrogram(x)
    assert len(whole) == 600
    for k, chunk in _chunks(x, EXTRA_FRAMES):
        theirs = tf_log_mel(tf, chunk)[:256]
        assert theirs.shape == whole[k : k + 256].shape
        np.testing.assert_allclose(whole[k : k + 256], theirs, atol=1e-3, rtol=0)
    # Without them, frame 255 sees pad_end zeros instead of the next 320 samples and differs.
    _, short = next(_chunks(x, 0))
    assert np.abs(tf_log_mel(tf, short)[255] - whole[255]).max() > 0.1


def test_chunks_with_16_extra_frames_equal_the_whole_file_slice():
    x = music(12.0, seed=1)
    whole = log_mel_spectrogram(x)
    for k, chunk in _chunks(x, EXTRA_FRAMES):
        np.testing.assert_allclose(log_mel_spectrogram(chunk)[:256], whole[k : k + 256], atol=1e-5, rtol=0)
    _, short = next(_chunks(x, 0))
    np.testing.assert_allclose(log_mel_spectrogram(short)[:255], whole[:255], atol=1e-5, rtol=0)
    assert np.abs(log_mel_spectrogram(short)[255] - whole[255]).max() > 0.1


# -- without TensorFlow -----------------------------------------------------------------------------------


def test_mel_matrix_is_htk_triangles_linear_in_mel():
    w = mel_matrix()
    assert w.shape == (513, 128) and w.dtype == np.float32
    assert mel_matrix() is w and not w.flags.writeable
    with pytest.raises(ValueError):
        w[1, 0] = 2.0
    assert not w[0].any()
    assert (w >= 0).all() and w.max() <= 1.0 and (w.max(axis=0) > 0.5).all()  # no empty band

    # training-spec.md's float64 reference; TF's float32 arithmetic moves it by up to 2e-5.
    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)

    m = mel(np.linspace(0.0, 8000.0, 513)[1:])[:, None]
    e = np.linspace(mel(0.0), mel(8000.0), 130)
    lo, c, hi = e[:-2], e[1:-1], e[2:]
    ref = np.pad(np.maximum(0.0, np.minimum((m - lo) / (c - lo), (hi - m) / (hi - c))), [(1, 0), (0, 0)])
    np.testing.assert_allclose(w, ref, atol=2e-5, rtol=0)


def test_float32_log_is_a_faithful_log():
    x = np.random.default_rng(0).uniform(1.0, 12.5, 100_000).astype(np.float32)
    exact = np.log(x.astype(np.float64))
    ours = features._log_float32(x)
    assert ours.dtype == np.float32
    assert np.abs(ours - exact).max() <= 2 * np.spacing(np.float32(2.6))  # 2 ulp at ln(12.5)


@pytest.mark.parametrize(
    ("n", "frames"), [(0, 0), (1, 1), (319, 1), (320, 1), (321, 2), (81_920, 256), (81_921, 257)]
)
def test_frame_counts(n, frames):
    assert num_frames(n) == frames
    out = log_mel_spectrogram(np.zeros(n, np.float32))
    assert out.shape == (frames, NUM_MEL_BINS) and out.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silence_is_the_log_floor_everywhere(dtype):
    out = log_mel_spectrogram(np.zeros(SEGMENT + 5, dtype))
    assert out.shape == (257, 128)
    assert (out == FLOOR).all()
    assert FLOOR == pytest.approx(-11.512925)


def test_frames_are_not_centred():
    """Frame k reads samples [320 k, 320 k + 640) and nothing else (pad_end, not centre)."""
    x = np.zeros(3200, np.float32)
    x[1000] = 1.0  # inside frames 2 (640..1280) and 3 (960..1600) only
    out = log_mel_spectrogram(x)
    heard = np.flatnonzero((out > FLOOR).any(axis=1))
    assert heard.tolist() == [2, 3]


def test_energy_lands_in_the_right_band_at_the_documented_level():
    out = log_mel_spectrogram(sine(1000.0, 1.0, 0.3))
    centres_hz = 700.0 * np.expm1(np.linspace(0.0, 1127.0 * np.log1p(8000.0 / 700.0), 130)[1:-1] / 1127.0)
    assert abs(centres_hz[out[10].argmax()] - 1000.0) < 40.0  # bands are about 60 Hz wide at 1 kHz
    assert log_mel_spectrogram(sine(440.0, 1.0, 0.3)).max() == pytest.approx(4.15, abs=0.01)  # spec figure


@pytest.mark.parametrize("freq", [1000.0, 3000.0])
def test_other_rates_are_resampled_to_16k(freq):
    ref = log_mel_spectrogram(sine(freq, 2.0, 0.5, 16_000))
    got = log_mel_spectrogram(sine(freq, 2.0, 0.5, 44_100), sample_rate=44_100)
    assert got.shape == ref.shape == (100, 128)
    # Frame 0 hears the sine's abrupt start and frames 98-99 its end, which the 44.1 kHz signal carries above
    # 8 kHz and the resampler low-passes (measured: up to 1.2e-5 and 2.8e-3 of the peak mel). The frames
    # between hear a steady sine, where soxr "HQ" (a 20-bit, about -120 dB, resampler) leaves the mel within
    # 4.8e-7 of the peak (1 ulp of the float32 log-mel) and the log-mel within 1.4e-5 wherever the mel is
    # within 60 dB of the peak. The bounds leave margins of 20 and 70.
    inner = slice(1, -2)
    mel_ref, mel_got = np.exp(ref[inner].astype(np.float64)), np.exp(got[inner].astype(np.float64))
    peak = mel_ref.max()
    assert np.abs(mel_got - mel_ref).max() <= 1e-5 * peak
    loud = mel_ref > 1e-3 * peak
    assert (loud.sum(axis=1) >= 3).all()  # the sine's band and its neighbours, not one value a frame
    assert np.abs(got[inner] - ref[inner])[loud].max() <= 1e-3


def test_float64_input_at_16k_is_used_as_given():
    x = music(1.0).astype(np.float64) + 1e-9  # a difference float32 cannot hold
    expected = np.log(np.clip(features._mel_float64(x), 1e-5, 1e8)).astype(np.float32)
    np.testing.assert_array_equal(log_mel_spectrogram(x), expected)


def test_memory_stays_bounded_for_long_audio():
    x = np.random.default_rng(0).standard_normal(5 * 60 * SR).astype(np.float32) * 0.1  # 5 min
    tracemalloc.start()
    try:
        out = log_mel_spectrogram(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (15_000, 128)
    # The output is 7.7 MB; all 15 000 frames at once would need over 300 MB of float64 work arrays.
    assert peak < out.nbytes + 64 * 2**20


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros((100, 2), np.float32), r"1-D array of samples, got an array of shape \(100, 2\)"),
        (np.float32(0.5), r"1-D array of samples, got an array of shape \(\)"),
        (np.zeros(100, np.int16), r"float samples .* got dtype int16"),
        (np.array([0.0, np.nan, 0.0], np.float32), r"non-finite sample \(nan at index 1\)"),
        (np.array([0.0, 0.0, -np.inf]), r"non-finite sample \(-inf at index 2\)"),
    ],
)
def test_bad_audio_raises_value_error(audio, message):
    with pytest.raises(ValueError, match=message):
        log_mel_spectrogram(audio)


def test_huge_but_finite_samples_are_accepted():
    x = np.full(640, 3e38, np.float32)  # the float64 sum is finite; a float32 one would overflow
    assert (log_mel_spectrogram(x) == np.float32(np.log(1e8))).all()


@pytest.mark.parametrize("rate", [0, -16000, float("nan"), "fast"])
def test_bad_sample_rate_raises_value_error(rate):
    with pytest.raises(ValueError, match="sample_rate must be a positive number"):
        log_mel_spectrogram(np.zeros(100, np.float32), sample_rate=rate)


def test_importing_features_pulls_in_no_torch():
    code = "import sys, spectrosynth.features; print('torch' in sys.modules, 'tensorflow' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- load_audio -------------------------------------------------------------------------------------------

LOSSLESS = {"wav": 1e-3, "flac": 1e-3}
LOSSY = {"ogg": 0.01}
if "MP3" in sf.available_formats():
    LOSSY["mp3"] = 0.01


@pytest.mark.parametrize(("ext", "tol"), sorted({**LOSSLESS, **LOSSY}.items()))
def test_load_audio_mixes_stereo_to_mono_and_resamples(tmp_path, ext, tol):
    left, right = sine(440.0, 1.0, 0.5, 44_100), sine(660.0, 1.0, 0.3, 44_100)
    path = tmp_path / f"stereo.{ext}"
    sf.write(path, np.stack([left, right], axis=1), 44_100)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    if ext in LOSSLESS:
        assert len(x) == SR
    else:  # encoders may pad a few ms
        assert abs(len(x) - SR) < 0.1 * SR
    middle = x[4000:12000]  # 0.5 s: 220 and 330 periods
    assert amplitude(middle, 440.0) == pytest.approx(0.25, abs=tol)  # each channel at half level
    assert amplitude(middle, 660.0) == pytest.approx(0.15, abs=tol)


def test_load_audio_at_the_file_rate_returns_the_samples_unchanged(tmp_path):
    x = music(1.0)
    sf.write(tmp_path / "mono.wav", x, SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "mono.wav"), x)


def test_load_audio_resamples_to_the_rate_asked(tmp_path):
    sf.write(tmp_path / "a.flac", sine(440.0, 1.0, 0.5, 44_100), 44_100)
    x = load_audio(str(tmp_path / "a.flac"), sample_rate=22_050)
    assert len(x) == 22_050
    expected = soxr.resample(sine(440.0, 1.0, 0.5, 44_100), 44_100, 22_050)
    np.testing.assert_allclose(x, expected, atol=1e-4)  # FLAC stores 16 bits


def _write_flac(path: Path) -> bytes:
    sf.write(path, music(2.0), SR)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.wav", None, "no such file; check the path"),
        ("empty.wav", lambda p: p.write_bytes(b""), r"the file is empty \(0 bytes\)"),
        (
            "notes.wav",
            lambda p: p.write_bytes(b"RIFF? not really " * 100),
            "not an audio file soundfile can read",
        ),
        ("cut.flac", lambda p: p.write_bytes(_write_flac(p)[:3000]), "damaged or unsupported"),
        ("silent.wav", lambda p: sf.write(p, np.zeros(0, np.float32), SR), "holds no samples"),
    ],
)
def test_unreadable_files_raise_one_line_errors_naming_the_file(tmp_path, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(SpectrosynthError, match=message) as info:
        load_audio(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


def test_a_folder_is_not_an_audio_file(tmp_path):
    with pytest.raises(SpectrosynthError, match="is a folder, not an audio file"):
        load_audio(tmp_path)
