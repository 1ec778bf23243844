"""--loudness: integrated loudness (ITU-R BS.1770-4) measured as audio streams (spectrosynth.loudness) and
the AudioWriter's loudness target under the peak ceiling, on render and batch."""

import math

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from typer.testing import CliRunner

from spectrosynth.audio import AudioWriter, db_to_gain
from spectrosynth.cli import app
from spectrosynth.errors import OutputError
from spectrosynth.loudness import LoudnessMeter

runner = CliRunner()


def music_like(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Tones with a slow swell and some noise, a quiet first third (which the gates leave out)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(t)) + 0.1 * np.sin(2 * np.pi * 97 * t)
    x = tone[:, None] + 0.05 * rng.standard_normal((len(t), channels))
    x[: len(t) // 3] *= 0.001
    return x[:, 0] if channels == 1 else x


@pytest.mark.parametrize(
    "rate,channels,seconds,chunk",
    [
        (16000, 1, 7.3, 4097),
        (48000, 2, 6.0, 48000),
        (44100, 2, 3.0, 1000),
        (11025, 1, 5.0, 10**9),
        (16000, 1, 0.45, 333),
    ],  # fmt: skip
)
def test_streaming_meter_equals_pyloudnorm(rate, channels, seconds, chunk):
    x = music_like(rate, seconds, channels)
    meter = LoudnessMeter(rate, channels)
    for i in range(0, len(x), chunk):
        meter.feed(x[i : i + chunk])
    expected = pyloudnorm.Meter(rate).integrated_loudness(x)
    assert meter.integrated() == pytest.approx(expected, abs=0.01)


def test_meter_silence_and_too_short():
    meter = LoudnessMeter(16000)
    meter.feed(np.zeros(32000))
    assert meter.integrated() == -math.inf
    short = LoudnessMeter(16000)
    short.feed(np.ones(6000) * 0.1)  # under one 400 ms block
    assert short.integrated() is None
    with pytest.raises(ValueError):
        LoudnessMeter(16000, 2).feed(np.zeros(100))  # mono data for a stereo meter


def write(path, audio, **kw):
    with AudioWriter(str(path), "wav", **kw) as w:
        for i in range(0, len(audio), 10007):
            w.write(audio[i : i + 10007].astype(np.float32))
    return w.summary


@pytest.mark.parametrize("target", [-14.0, -23.0])
@pytest.mark.parametrize("rate,channels", [(None, 1), (48000, 2)])
def test_writer_reaches_the_target(tmp_path, target, rate, channels):
    x = music_like(16000, 8.0, channels) * 0.2
    summary = write(tmp_path / "a.wav", x, loudness=target, sample_rate=rate, channels=channels,
                    bit_depth=24)  # fmt: skip
    y, out_rate = sf.read(tmp_path / "a.wav")
    measured = pyloudnorm.Meter(out_rate).integrated_loudness(y)
    assert measured == pytest.approx(target, abs=0.1)
    assert summary.loudness == pytest.approx(measured, abs=0.1) and summary.notice is None
    assert np.abs(y).max() <= db_to_gain(-1.0) + 1e-4  # under the peak ceiling


def test_peak_ceiling_holds_the_loudness_lower(tmp_path):
    x = music_like(16000, 6.0)
    x[16000 * 4] = 0.9  # one spike: reaching -6 LUFS would put it far above full scale
    summary = write(tmp_path / "a.wav", x, loudness=-6.0, bit_depth=32)
    y, _ = sf.read(tmp_path / "a.wav")
    assert np.abs(y).max() == pytest.approx(db_to_gain(-1.0), abs=1e-5)
    measured = pyloudnorm.Meter(16000).integrated_loudness(y)
    assert measured < -6.5 and summary.loudness == pytest.approx(measured, abs=0.05)
    assert "not -6" in summary.notice and "-1 dBFS" in summary.notice


def test_gain_applies_after_the_target(tmp_path):
    summary = write(tmp_path / "a.wav", music_like(16000, 6.0) * 0.1, loudness=-20.0, gain_db=-3.0)
    y, _ = sf.read(tmp_path / "a.wav")
    assert pyloudnorm.Meter(16000).integrated_loudness(y) == pytest.approx(-23.0, abs=0.1)
    assert summary.loudness == pytest.approx(-23.0, abs=0.1)


def test_silent_or_short_audio_is_left_alone(tmp_path):
    summary = write(tmp_path / "a.wav", np.zeros(32000), loudness=-14.0)
    assert summary.scale == 1.0 and "silent" in summary.notice
    summary = write(tmp_path / "b.wav", np.full(3000, 0.1), loudness=-14.0)
    assert summary.scale == 1.0 and "shorter than 0.4 s" in summary.notice


def test_bad_level_options(tmp_path):
    with pytest.raises(OutputError, match="only one"):
        AudioWriter(str(tmp_path / "a.wav"), "wav", normalize=True, loudness=-14.0)
    with pytest.raises(OutputError, match="between -70 and 0"):
        AudioWriter(str(tmp_path / "a.wav"), "wav", loudness=3.0)
    with pytest.raises(OutputError, match="--channels"):
        AudioWriter(str(tmp_path / "a.wav"), "wav", channels=6)
    assert not list(tmp_path.iterdir())


def test_stereo_and_a_deferred_level(tmp_path):
    x = music_like(16000, 2.0, channels=2) * 0.5
    w = AudioWriter(str(tmp_path / "a.wav"), "wav", bit_depth=32, channels=2, deferred_level=True)
    w.write(x.astype(np.float32))
    with pytest.raises(ValueError, match="mono"):
        AudioWriter(str(tmp_path / "m.wav"), "wav").write(x)
    with pytest.raises(ValueError):
        w.close()  # a deferred level must be given
    summary = w.close(level=0.5)
    y, _ = sf.read(tmp_path / "a.wav")
    assert y.shape == x.shape and summary.channels == 2
    np.testing.assert_allclose(y, x * 0.5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def model_args(tiny_model):
    return ["--model", str(tiny_model), "--device", "cpu", "--steps", "2"]


def test_render_loudness_minus_14(tmp_path, waltz, model_args):
    out = tmp_path / "a.wav"
    result = runner.invoke(app, ["render", str(waltz), str(out), "--loudness", "-14", "--duration", "8",
                                 *model_args])  # fmt: skip
    assert result.exit_code == 0, result.output
    y, rate = sf.read(out)
    assert pyloudnorm.Meter(rate).integrated_loudness(y) == pytest.approx(-14.0, abs=0.5)
    assert np.abs(y).max() <= db_to_gain(-1.0) + 1e-4  # never clips: under the -1 dBFS ceiling
    assert "LUFS" in result.output  # the measured loudness in the summary line
    # stereo, with stems: the mix meets the target; each stem keeps the mix's level
    stems = tmp_path / "stems"
    result = runner.invoke(
        app,
        [
            "render",
            str(waltz),
            str(tmp_path / "s.wav"),
            "--loudness",
            "-14",
            "--channels",
            "2",
            "--stems",
            str(stems),
            "--duration",
            "8",
            *model_args,
        ],
    )
    assert result.exit_code == 0, result.output
    mix, rate = sf.read(tmp_path / "s.wav")
    assert mix.shape[1] == 2 and pyloudnorm.Meter(rate).integrated_loudness(mix) == pytest.approx(
        -14, abs=0.5
    )
    total = sum(sf.read(p)[0] for p in stems.iterdir())
    np.testing.assert_allclose(total, mix, atol=len(list(stems.iterdir())) / 32768)


def test_render_rejects_loudness_with_normalize(tmp_path, waltz, model_args):
    result = runner.invoke(app, ["render", str(waltz), str(tmp_path / "a.wav"), "--loudness", "-14",
                                 "--normalize", *model_args])  # fmt: skip
    assert result.exit_code == 2 and "--normalize" in result.output
    result = runner.invoke(
        app, ["render", str(waltz), str(tmp_path / "a.wav"), "--loudness", "5", *model_args]
    )
    assert result.exit_code == 2
    assert not list(tmp_path.iterdir())


def test_batch_loudness_in_summary_and_manifest(tmp_path, waltz, tiny_model):
    collection = tmp_path / "midi"
    collection.mkdir()
    (collection / "w.mid").write_bytes(waltz.read_bytes())
    out = tmp_path / "audio"
    result = runner.invoke(app, ["batch", str(collection), str(out), "--model", str(tiny_model), "--device",
                                 "cpu", "--steps", "2", "--duration", "6", "--loudness", "-23"])  # fmt: skip
    assert result.exit_code == 0, result.output
    y, rate = sf.read(out / "w.wav")
    assert pyloudnorm.Meter(rate).integrated_loudness(y) == pytest.approx(-23.0, abs=0.5)
    assert "-23.0 LUFS" in result.output
    from spectrosynth.batch.manifest import read_lines

    files = list(read_lines(out))
    assert files[0]["loudness_lufs"] == pytest.approx(-23.0, abs=0.5)
