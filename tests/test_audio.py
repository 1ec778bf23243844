"""spectrosynth.audio: formats, levels, resampling, stdout, atomic publishing and bounded memory."""

from __future__ import annotations

import io
import os
import stat
import sys
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from spectrosynth import audio
from spectrosynth.audio import (
    AudioWriter,
    WriteSummary,
    check_output,
    db_to_gain,
    gain_to_db,
    output_format,
    subtype_for,
)
from spectrosynth.errors import OutputError, SpectrosynthError

SR = 16_000
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def sine(freq: float = 1000.0, seconds: float = 1.0, amp: float = 0.5, rate: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def music(seconds: float = 1.0, amp: float = 0.5, seed: int = 0) -> np.ndarray:
    """A few partials plus a little noise, peak `amp`."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    partials = ((220, 0.0, 1.0), (330, 1.0, 0.5), (1234, 2.0, 0.33))  # Hz, phase, amplitude
    x = sum(a * np.sin(2 * np.pi * f * t + p) for f, p, a in partials)
    x = x + 0.05 * rng.standard_normal(len(t))
    return (amp * x / np.abs(x).max()).astype(np.float32)


def write(path, x, fmt="wav", chunk=4096, **kw) -> WriteSummary:
    with AudioWriter(str(path), fmt, **kw) as w:
        for i in range(0, len(x), chunk):
            w.write(x[i : i + chunk])
    return w.summary


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


# -- helpers and argument checks -------------------------------------------------------------------------


def test_db_helpers():
    assert db_to_gain(0) == 1.0
    assert db_to_gain(-20) == pytest.approx(0.1)
    assert gain_to_db(0.5) == pytest.approx(-6.0206, abs=1e-4)
    assert gain_to_db(0) == -np.inf
    assert gain_to_db(db_to_gain(-3.7)) == pytest.approx(-3.7)


@pytest.mark.parametrize(
    ("path", "fmt", "expected"),
    [
        ("song.wav", None, "wav"),
        ("dir/Song.WAV", None, "wav"),
        ("song.wave", None, "wav"),
        ("song.FLAC", None, "flac"),
        ("-", "flac", "flac"),
        ("-", "WAV", "wav"),
        ("song.wav", "wav", "wav"),
        ("song.audio", "flac", "flac"),
        ("song", "wav", "wav"),
    ],
)
def test_output_format(path, fmt, expected):
    assert output_format(path, fmt) == expected


@pytest.mark.parametrize(
    ("path", "fmt", "match"),
    [
        ("-", None, "--format"),
        ("song.mp3", None, r"\.wav or \.flac.*--format"),
        ("song", None, "no extension"),
        ("song.wav", "mp3", "--format wav or --format flac"),
        ("song.flac", "wav", "FLAC file but --format wav"),
    ],
)
def test_output_format_errors(path, fmt, match):
    with pytest.raises(OutputError, match=match) as e:
        output_format(path, fmt)
    assert isinstance(e.value, SpectrosynthError) and "\n" not in str(e.value)


def test_subtype_for():
    assert subtype_for("wav", 16) == "PCM_16"
    assert subtype_for("wav", 24) == "PCM_24"
    assert subtype_for("wav", 32) == "FLOAT"
    assert subtype_for("flac", 16) == "PCM_16"
    assert subtype_for("flac", 24) == "PCM_24"
    with pytest.raises(OutputError, match="FLAC holds at most 24 bits; use --bit-depth 24 or a .wav file"):
        subtype_for("flac", 32)
    for depth in (8, 20, 64, 0):
        with pytest.raises(OutputError, match="16, 24 or 32"):
            subtype_for("wav", depth)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(clip="soft"), "unknown --clip"),
        (dict(gain_db=float("nan")), "--gain"),
        (dict(peak_db=float("inf")), "--peak"),
        (dict(sample_rate=0), "--sample-rate"),
        (dict(sample_rate=44100.5), "--sample-rate"),
        (dict(bit_depth=12), "bit depth"),
    ],
)
def test_writer_argument_errors(tmp_path, kw, match):
    with pytest.raises(OutputError, match=match):
        AudioWriter(str(tmp_path / "a.wav"), "wav", **kw)
    assert listing(tmp_path) == []


# -- formats and values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "depth", "subtype", "tol"),
    [
        ("wav", 16, "PCM_16", 1.5 / 2**15),
        ("wav", 24, "PCM_24", 1.5 / 2**23),
        ("wav", 32, "FLOAT", 0.0),
        ("flac", 16, "PCM_16", 1.5 / 2**15),
        ("flac", 24, "PCM_24", 1.5 / 2**23),
    ],
)
def test_formats_round_trip(tmp_path, fmt, depth, subtype, tol):
    x = music(1.3)
    path = tmp_path / f"out.{fmt}"
    summary = write(path, x, fmt, bit_depth=depth)
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == (
        fmt.upper(),
        subtype,
        SR,
        1,
        len(x),
    )
    y, rate = sf.read(str(path), dtype="float32")
    assert rate == SR and len(y) == len(x)
    np.testing.assert_allclose(y, x, rtol=0, atol=tol)
    assert summary == WriteSummary(
        path=str(path),
        format=fmt,
        subtype=subtype,
        sample_rate=SR,
        frames=len(x),
        duration=len(x) / SR,
        peak=pytest.approx(0.5, rel=1e-6),
        scale=1.0,
        clipped_samples=0,
        notice=None,
    )
    assert summary.peak_dbfs == pytest.approx(-6.0206, abs=1e-3)
    assert listing(tmp_path) == [f"out.{fmt}"]


@pytest.mark.parametrize("sample_rate", [None, 48_000])
@pytest.mark.parametrize("normalize", [False, True])
def test_chunking_does_not_change_the_output(tmp_path, sample_rate, normalize):
    x = music(2.0)
    whole = write(
        tmp_path / "whole.wav", x, chunk=len(x), bit_depth=32, sample_rate=sample_rate, normalize=normalize
    )
    reference, _ = sf.read(str(tmp_path / "whole.wav"), dtype="float32")
    sizes = [0, 1, 0, 2, 3, 100, 0, 81_920, 1, 4095, 7]
    with AudioWriter(
        str(tmp_path / "chunks.wav"), "wav", bit_depth=32, sample_rate=sample_rate, normalize=normalize
    ) as w:
        i = 0
        for size in sizes:
            w.write(x[i : i + size])
            i += size
        w.write(x[i:])
        w.write(x[:0])
    y, _ = sf.read(str(tmp_path / "chunks.wav"), dtype="float32")
    assert w.summary.frames == whole.frames == len(reference) == len(y)
    np.testing.assert_allclose(y, reference, rtol=0, atol=1e-6)


def test_write_accepts_column_vectors_and_other_dtypes(tmp_path):
    x = music(0.2)
    with AudioWriter(str(tmp_path / "a.wav"), "wav", bit_depth=32) as w:
        w.write(x[:1000].reshape(-1, 1))
        w.write(x[1000:2000].astype(np.float64))
        w.write(x[2000:].reshape(1, -1))
    y, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    np.testing.assert_array_equal(y, x)


def test_write_leaves_the_callers_array_alone(tmp_path):
    x = music(0.2, amp=2.0)
    before = x.copy()
    write(tmp_path / "a.wav", x, gain_db=-3, clip="clamp")
    write(tmp_path / "b.wav", x, sample_rate=44100, gain_db=6)
    np.testing.assert_array_equal(x, before)


def test_misuse(tmp_path):
    w = AudioWriter(str(tmp_path / "a.wav"), "wav")
    with pytest.raises(ValueError, match="mono"):
        w.write(np.zeros((10, 2), np.float32))
    w.write(np.zeros(10, np.float32))
    summary = w.close()
    assert w.close() is summary  # idempotent
    w.abort()  # no-op after close
    assert listing(tmp_path) == ["a.wav"]
    with pytest.raises(ValueError, match="closed"):
        w.write(np.zeros(10, np.float32))


@pytest.mark.parametrize("normalize", [False, True])
def test_empty_output(tmp_path, normalize):
    summary = write(tmp_path / "a.wav", np.zeros(0, np.float32), normalize=normalize, sample_rate=48000)
    assert summary.frames == 0 and summary.peak == 0.0 and summary.duration == 0.0
    assert sf.info(str(tmp_path / "a.wav")).frames == 0
    with pytest.raises(OutputError, match="no audio to write.*0 samples.*FLAC"):
        write(tmp_path / "a.flac", np.zeros(0, np.float32), "flac", normalize=normalize)
    assert listing(tmp_path) == ["a.wav"]


# -- resampling ------------------------------------------------------------------------------------------


def dominant_frequency(y: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1 : k + 2])  # parabolic interpolation between bins
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(y)


@pytest.mark.parametrize("rate", [44_100, 48_000, 22_050])
@pytest.mark.parametrize("n", [81_920, 3 * 81_920 + 17])
def test_resampling_keeps_frequency_amplitude_and_length(tmp_path, rate, n):
    x = sine(1000.0, n / SR, amp=0.5)[:n]
    summary = write(tmp_path / "a.wav", x, chunk=81_920, bit_depth=32, sample_rate=rate)
    y, got_rate = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    assert got_rate == rate == summary.sample_rate
    assert abs(len(y) - round(n * rate / SR)) <= 1
    assert summary.frames == len(y) and summary.duration == pytest.approx(n / SR, abs=1 / rate)
    assert dominant_frequency(y, rate) == pytest.approx(1000.0, abs=0.5)
    middle = y[len(y) // 10 : -len(y) // 10]  # away from the filter's edges
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.005)
    assert np.sqrt(np.mean(middle.astype(np.float64) ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.005)
    # zero crossings agree with the FFT: 2 per period
    crossings = np.count_nonzero(np.signbit(middle[1:]) != np.signbit(middle[:-1]))
    assert crossings / (len(middle) / rate) == pytest.approx(2000, rel=0.01)


def test_same_rate_does_not_resample(tmp_path):
    x = music(0.5)
    write(tmp_path / "a.wav", x, bit_depth=32, sample_rate=SR)
    y, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    np.testing.assert_array_equal(y, x)


def test_other_input_rate(tmp_path):
    x = sine(500.0, 1.0, rate=22_050)
    summary = write(tmp_path / "a.wav", x, bit_depth=32, input_rate=22_050, sample_rate=SR)
    assert abs(summary.frames - SR) <= 1 and summary.sample_rate == SR


# -- levels ----------------------------------------------------------------------------------------------


def test_gain(tmp_path):
    x = music(0.5, amp=0.5)
    summary = write(tmp_path / "a.wav", x, bit_depth=32, gain_db=-6.0)
    y, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    np.testing.assert_allclose(y, x * db_to_gain(-6.0), rtol=1e-6, atol=1e-7)
    assert summary.peak == pytest.approx(0.5 * db_to_gain(-6), rel=1e-6) and summary.notice is None


@pytest.mark.parametrize("fmt,depth", [("wav", 32), ("wav", 16), ("flac", 24)])
def test_normalize_to_minus_one_dbfs(tmp_path, fmt, depth):
    x = music(1.0, amp=0.2)
    summary = write(tmp_path / f"a.{fmt}", x, fmt, bit_depth=depth, normalize=True)
    y, _ = sf.read(str(tmp_path / f"a.{fmt}"), dtype="float32")
    target = 10 ** (-1 / 20)
    tol = 1e-6 if depth == 32 else 2.0 / 2 ** (depth - 1)
    assert np.abs(y).max() == pytest.approx(target, abs=tol)
    assert summary.peak == pytest.approx(target, rel=1e-6)
    assert summary.scale == pytest.approx(target / 0.2, rel=1e-6)
    np.testing.assert_allclose(y, x * (target / np.abs(x).max()), rtol=0, atol=max(tol, 1e-6))
    assert summary.notice is None


def test_normalize_then_gain_and_other_peak(tmp_path):
    x = music(0.5, amp=0.9)
    summary = write(tmp_path / "a.wav", x, bit_depth=32, normalize=True, peak_db=-6.0, gain_db=-3.0)
    y, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    assert np.abs(y).max() == pytest.approx(db_to_gain(-9.0), rel=1e-5)
    assert summary.peak == pytest.approx(db_to_gain(-9.0), rel=1e-6)


def test_normalize_silence(tmp_path):
    summary = write(tmp_path / "a.wav", np.zeros(1000, np.float32), normalize=True)
    y, _ = sf.read(str(tmp_path / "a.wav"))
    assert not y.any() and summary.scale == 1.0 and "silent" in summary.notice


def test_rescale_is_the_default_and_scales_the_whole_file(tmp_path):
    x = music(1.0, amp=1.5)
    summary = write(tmp_path / "a.wav", x, bit_depth=32)
    y, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    assert np.abs(y).max() == pytest.approx(1.0, abs=1e-7) and np.abs(y).max() <= 1.0
    np.testing.assert_allclose(y, x / 1.5, rtol=1e-6, atol=1e-7)
    assert summary.scale == pytest.approx(1 / 1.5) and summary.peak == pytest.approx(1.0)
    assert summary.clipped_samples == 0
    assert summary.notice == (
        "the output peaked at +3.5 dBFS and was scaled down by 3.5 dB to avoid clipping (--clip rescale)"
    )


def test_rescale_after_gain_and_tiny_overshoot(tmp_path):
    x = music(0.5, amp=0.5)
    summary = write(tmp_path / "a.wav", x, gain_db=6.03)  # 0.5 * 2.0025 = 1.0012: +0.011 dB
    assert summary.notice.startswith("the output peaked at +0.01 dBFS and was scaled down by 0.01 dB")
    summary = write(tmp_path / "b.wav", x, gain_db=3.0)
    assert summary.notice is None and summary.scale == 1.0


def test_clamp(tmp_path):
    x = music(1.0, amp=2.0)
    summary = write(tmp_path / "a.wav", x, bit_depth=32, clip="clamp")
    y, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    np.testing.assert_array_equal(y, np.clip(x, -1, 1))
    over = int(np.count_nonzero(np.abs(x) > 1))
    assert over > 0 and summary.clipped_samples == over
    assert summary.peak == 1.0 and summary.scale == 1.0
    assert summary.notice.startswith(f"the output peaked at +6.0 dBFS; {over} samples (")
    assert summary.notice.endswith("were clamped to full scale (--clip clamp)")


def test_clamp_with_normalize(tmp_path):
    x = music(0.5, amp=0.3)
    summary = write(tmp_path / "a.wav", x, bit_depth=32, clip="clamp", normalize=True, peak_db=0.0)
    assert summary.clipped_samples == 0 and summary.notice is None  # float rounding is not clipping
    summary = write(tmp_path / "b.wav", x, bit_depth=32, clip="clamp", normalize=True, gain_db=3.0)
    assert summary.clipped_samples > 0 and "+2.0 dBFS" in summary.notice


def test_clip_none_keeps_float_overs(tmp_path):
    x = music(0.5, amp=1.5)
    summary = write(tmp_path / "a.wav", x, bit_depth=32, clip="none")
    y, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    np.testing.assert_array_equal(y, x)
    assert summary.peak == pytest.approx(1.5) and summary.clipped_samples == 0
    assert summary.notice == (
        "the output peaks at +3.5 dBFS, beyond full scale; kept as is in 32-bit float (--clip none)"
    )


def test_clip_none_with_pcm_clips_like_the_encoder(tmp_path):
    x = music(0.5, amp=1.5)
    summary = write(tmp_path / "a.flac", x, "flac", bit_depth=24, clip="none")
    y, _ = sf.read(str(tmp_path / "a.flac"), dtype="float32")
    np.testing.assert_allclose(y, np.clip(x, -1, 1), atol=2 / 2**23)
    assert summary.clipped_samples == int(np.count_nonzero(np.abs(x) > 1)) > 0
    assert "24-bit PCM cannot go beyond full scale (--clip none)" in summary.notice


def test_no_notice_without_overs(tmp_path):
    for clip in ("rescale", "clamp", "none"):
        assert write(tmp_path / f"{clip}.wav", music(0.2), clip=clip).notice is None


def test_non_finite_audio_is_refused(tmp_path):
    x = music(0.5)
    x[100] = np.nan
    with pytest.raises(OutputError, match="1 NaN or infinite samples"):
        write(tmp_path / "a.wav", x)
    assert listing(tmp_path) == []


# -- stdout ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_stdout(tmp_path, fmt):
    x = music(1.0, amp=1.2)
    out = io.BytesIO()
    summary = write("-", x, fmt, stdout=out, sample_rate=44_100)
    write(tmp_path / f"ref.{fmt}", x, fmt, sample_rate=44_100)
    assert summary.path == "-" and summary.notice is not None
    out.seek(0)
    y, rate = sf.read(out, dtype="float32")
    ref, _ = sf.read(str(tmp_path / f"ref.{fmt}"), dtype="float32")
    assert rate == 44_100 and len(y) == summary.frames
    np.testing.assert_array_equal(y, ref)
    assert out.getvalue() == (tmp_path / f"ref.{fmt}").read_bytes()


def test_stdout_defaults_to_sys_stdout_and_leaves_no_temporaries(tmp_path, monkeypatch):
    class FakeStdout:
        buffer = io.BytesIO()

        def isatty(self):
            return False

    fake = FakeStdout()
    monkeypatch.setattr(sys, "stdout", fake)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(audio.tempfile, "tempdir", None)
    write("-", music(0.3), "wav", normalize=True)
    assert sf.info(io.BytesIO(fake.buffer.getvalue())).frames == round(0.3 * SR)
    assert listing(tmp_path) == []


def test_stdout_refuses_a_terminal(monkeypatch):
    class Tty:
        buffer = io.BytesIO()

        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Tty())
    with pytest.raises(OutputError, match="standard output is a terminal"):
        AudioWriter("-", "wav")


def test_stdout_broken_pipe():
    class Closed(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise BrokenPipeError(32, "Broken pipe")

    w = AudioWriter("-", "wav", stdout=Closed())
    w.write(music(0.1))
    with pytest.raises(OutputError, match="standard output stopped"):
        w.close()


# -- atomic publishing -----------------------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("normalize", [False, True])
def test_exception_leaves_nothing(tmp_path, exc, normalize):
    path = tmp_path / "a.wav"
    with pytest.raises(exc):
        with AudioWriter(str(path), "wav", normalize=normalize, clip="clamp") as w:
            w.write(music(0.5))
            assert any(n.endswith(".part") and n.startswith(".a.wav.") for n in listing(tmp_path))
            raise exc()
    assert listing(tmp_path) == []


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_exception_leaves_an_existing_target_untouched(tmp_path, exc):
    path = tmp_path / "a.wav"
    path.write_bytes(b"precious")
    with pytest.raises(exc):
        with AudioWriter(str(path), "wav", force=True) as w:
            w.write(music(0.5))
            raise exc()
    assert path.read_bytes() == b"precious"
    assert listing(tmp_path) == ["a.wav"]


def test_abort_without_with(tmp_path):
    w = AudioWriter(str(tmp_path / "a.flac"), "flac", sample_rate=48000)
    w.write(music(0.5))
    w.abort()
    w.abort()
    assert listing(tmp_path) == []
    with pytest.raises(ValueError):
        w.write(music(0.1))
    with pytest.raises(ValueError):
        w.close()


def test_existing_target_without_force_fails_before_writing(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match=r"a\.wav exists; use -f/--force to overwrite"):
        AudioWriter(str(path), "wav")
    with pytest.raises(OutputError, match="exists"):
        check_output(str(path), force=False)
    check_output(str(path), force=True)
    assert path.read_bytes() == b"precious" and listing(tmp_path) == ["a.wav"]


def test_force_replaces_only_at_close(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"precious")
    os.chmod(path, 0o640)
    w = AudioWriter(str(path), "wav", force=True)
    w.write(music(0.5))
    assert path.read_bytes() == b"precious"
    w.close()
    assert sf.info(str(path)).frames == round(0.5 * SR)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # the replaced file's permissions are kept
    assert listing(tmp_path) == ["a.wav"]


def test_new_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write(tmp_path / "a.wav", music(0.1))
    assert stat.S_IMODE(os.stat(tmp_path / "a.wav").st_mode) == 0o666 & ~umask


def test_target_appearing_meanwhile_is_left_alone(tmp_path):
    path = tmp_path / "a.wav"
    w = AudioWriter(str(path), "wav")
    w.write(music(0.5))
    path.write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="appeared while rendering.*-f/--force"):
        w.close()
    assert path.read_bytes() == b"someone else's"
    assert listing(tmp_path) == ["a.wav"]


def test_target_appearing_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(audio.os, "link", no_links)
    write(tmp_path / "ok.wav", music(0.1))
    path = tmp_path / "a.wav"
    w = AudioWriter(str(path), "wav")
    path.write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="appeared while rendering"):
        w.close()
    assert path.read_bytes() == b"someone else's"
    assert listing(tmp_path) == ["a.wav", "ok.wav"]


def test_symlinked_target_updates_the_file_it_points_to(tmp_path):
    real = tmp_path / "real.wav"
    real.write_bytes(b"old")
    link = tmp_path / "link.wav"
    link.symlink_to(real)
    write(link, music(0.1), force=True)
    assert link.is_symlink() and sf.info(str(real)).frames == round(0.1 * SR)


def test_write_failure_cleans_up(tmp_path, monkeypatch):
    w = AudioWriter(str(tmp_path / "a.wav"), "wav", clip="clamp")

    def full(data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(w._sf, "write", full)
    with pytest.raises(OutputError, match=r"could not write .*a\.wav \(No space left on device\)"):
        w.write(music(0.1))
    assert listing(tmp_path) == []


def test_write_failure_in_second_pass_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "a.wav"
    path.write_bytes(b"precious")
    w = AudioWriter(str(path), "wav", force=True)
    w.write(music(0.1))
    monkeypatch.setattr(w._sf, "write", lambda data: (_ for _ in ()).throw(sf.LibsndfileError(2)))
    with pytest.raises(OutputError, match="could not write"):
        w.close()
    assert path.read_bytes() == b"precious" and listing(tmp_path) == ["a.wav"]


# -- path checks -----------------------------------------------------------------------------------------


def test_check_output_paths(tmp_path):
    check_output("-", force=False)
    check_output(str(tmp_path / "new.wav"), force=False)
    with pytest.raises(OutputError, match=r"does not exist; create it first \(mkdir -p "):
        check_output(str(tmp_path / "missing" / "a.wav"), force=False)
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        check_output(str(tmp_path), force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_output(str(tmp_path / "file" / "a.wav"), force=False)
    assert listing(tmp_path) == ["file"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_check_output_refuses_special_files(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(OutputError, match="not a regular file"):
        check_output(str(tmp_path / "pipe.wav"), force=True)


def test_missing_folder_fails_in_the_constructor(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        AudioWriter(str(tmp_path / "missing" / "a.wav"), "wav")
    assert listing(tmp_path) == []


def test_unwritable_folder_reported_by_os_access(tmp_path, monkeypatch):
    monkeypatch.setattr(audio.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match="cannot write to folder .*permission denied"):
        AudioWriter(str(tmp_path / "a.wav"), "wav")
    assert listing(tmp_path) == []


def test_unwritable_folder_found_by_the_probe(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(audio.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write to folder .* \(Permission denied\)"):
        check_output(str(tmp_path / "a.wav"), force=False)


@pytest.mark.skipif(IS_ROOT or sys.platform == "win32", reason="root can write anywhere")
def test_unwritable_folder_for_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write to folder"):
            AudioWriter(str(folder / "a.wav"), "wav")
    finally:
        folder.chmod(0o700)
    assert listing(folder) == []


# -- bounded memory --------------------------------------------------------------------------------------


def test_memory_stays_bounded_with_normalize(tmp_path):
    """20 M samples (80 MB of float32) in 1 M-sample chunks, two passes: only a few chunks are ever held."""
    chunk = music(2**20 / SR, amp=0.4)
    loud = chunk * np.float32(2.0)
    n_chunks = 20
    tracemalloc.start()
    try:
        with AudioWriter(str(tmp_path / "long.wav"), "wav", normalize=True) as w:
            for i in range(n_chunks):
                w.write(loud if i == 7 else chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.summary.frames == n_chunks * 2**20
    assert peak < 16e6, f"peak Python allocation {peak / 1e6:.1f} MB"
    with sf.SoundFile(str(tmp_path / "long.wav")) as f:
        f.seek(7 * 2**20)
        y = f.read(2**20, dtype="float32")
    assert np.abs(y).max() == pytest.approx(10 ** (-1 / 20), abs=2 / 2**15)


def test_memory_stays_bounded_when_resampling_a_big_chunk(tmp_path):
    x = music(6_000_000 / SR, amp=1.2)  # one 24 MB write, split internally
    tracemalloc.start()
    try:
        summary = write(tmp_path / "a.flac", x, "flac", chunk=len(x), sample_rate=48_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(summary.frames - 18_000_000) <= 1
    assert peak < 30e6, f"peak Python allocation {peak / 1e6:.1f} MB"
