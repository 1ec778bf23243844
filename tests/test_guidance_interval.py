"""Guidance on part of the steps (--guidance-interval): full = today's sampler bit for bit, empty = unguided
bit for bit, the decoder passes it saves, and on data with a known answer the error against full guidance
shrinks as the interval widens."""

import json
import math

import numpy as np
import pytest
import torch

from spectrosynth.errors import SpectrosynthError
from spectrosynth.sampling import SAMPLERS, GuidanceInterval, as_interval, decoder_passes, guided_denoiser
from spectrosynth.sampling.schedule import logsnr
from spectrosynth.testing import GaussianData
from spectrosynth.tokens import prepare

EMPTY = GuidanceInterval(30.0, 40.0)  # no step of any sampler has a log-SNR above 20


def test_parse_and_errors():
    assert GuidanceInterval.parse("-5,3") == GuidanceInterval(-5.0, 3.0)
    assert GuidanceInterval.parse("-inf,2") == GuidanceInterval(-math.inf, 2.0)
    assert GuidanceInterval.parse("full").full and as_interval(None).full
    assert as_interval((-1, 1)) == GuidanceInterval(-1.0, 1.0) and as_interval("0,1") == GuidanceInterval(
        0, 1
    )
    assert str(GuidanceInterval(-5, 3)) == "-5,3" and str(GuidanceInterval()) == "full"
    for bad in ("3", "a,b", "1,2,3", "", "3,-5", "nan,1"):
        with pytest.raises(SpectrosynthError, match="guidance"):
            GuidanceInterval.parse(bad)


def test_which_steps_are_guided():
    interval = GuidanceInterval(-5.0, 3.0)
    for t in np.linspace(0.0, 1.0, 101):
        assert interval.guides(float(t)) == (-5.0 <= logsnr(float(t)) <= 3.0)
    assert not EMPTY.guides(0.0) and GuidanceInterval().guides(1.0)


def _segments(waltz, n=2):
    from spectrosynth.midi import read_midi

    return [s.tokens for s in prepare(read_midi(waltz)).segments[:n]]


@pytest.mark.parametrize("sampler", ["unipc", "ddpm", "dpmpp-2m-sde"])
def test_full_interval_is_todays_sampler_bit_for_bit(tiny_synth, waltz, sampler):
    segments = _segments(waltz)
    today = tiny_synth.generate_mel(segments, steps=6, seed=3, sampler=sampler)
    for full in ((-math.inf, math.inf), "full", GuidanceInterval()):
        mel = tiny_synth.generate_mel(segments, steps=6, seed=3, sampler=sampler, guidance_interval=full)
        assert np.array_equal(mel, today)


@pytest.mark.parametrize("sampler", ["unipc", "ddpm"])
def test_empty_interval_is_the_unguided_sampler_bit_for_bit(tiny_synth, waltz, sampler):
    segments = _segments(waltz)
    unguided = tiny_synth.generate_mel(segments, steps=6, seed=3, sampler=sampler, guidance=1.0)
    mel = tiny_synth.generate_mel(segments, steps=6, seed=3, sampler=sampler, guidance_interval=EMPTY)
    assert np.array_equal(mel, unguided)
    guided = tiny_synth.generate_mel(segments, steps=6, seed=3, sampler=sampler)
    assert not np.array_equal(mel, guided)  # guidance does change this network's output


@pytest.mark.parametrize("sampler", ["unipc", "ddpm", "dpmpp-2m"])
@pytest.mark.parametrize(
    "interval", [None, EMPTY, GuidanceInterval(-5.0, 3.0), GuidanceInterval(-math.inf, 0)]
)
def test_decoder_passes_are_counted(tiny_synth, waltz, monkeypatch, sampler, interval):
    """The passes the decoder really runs (a guided call is two rows per segment) against decoder_passes."""
    decoder, passes = tiny_synth.decoder, []
    forward = decoder.forward

    def counting(*args, unconditional=False, **kwargs):
        passes.append(2 if unconditional else 1)
        return forward(*args, unconditional=unconditional, **kwargs)

    monkeypatch.setattr(decoder, "forward", counting)
    steps = 8
    tiny_synth.generate_mel(_segments(waltz, 1), steps=steps, sampler=sampler, guidance_interval=interval)
    expected = decoder_passes(steps, 2.0, interval, sampler)
    assert sum(passes) == expected
    assert len(passes) == steps  # one call per step whatever the interval
    if interval is None:
        assert expected == 2 * steps
    elif interval == EMPTY:
        assert expected == steps
    else:
        assert steps < expected < 2 * steps
    assert decoder_passes(steps, 1.0, interval, sampler) == steps


def test_guidance_interval_reaches_the_batch_path(tiny_synth, waltz):
    """sample_segments (what `batch` calls) honours the interval as iter_mel does."""
    from spectrosynth.pipeline import SegmentRow

    tokens = _segments(waltz, 1)[0]
    one = tiny_synth.generate_mel([tokens], steps=4, seed=1, guidance_interval=(-5, 3))
    rows = [SegmentRow(tokens, None, torch.Generator().manual_seed(1))]
    mel = tiny_synth.sample_segments(rows, steps=4, guidance_interval=(-5, 3))[0]
    assert np.array_equal(mel, one)


def test_deviation_from_full_guidance_shrinks_as_the_interval_widens():
    """Gaussian data with a known noise predictor: the guided sample is known exactly, and each wider
    interval (nested) comes closer to it, ending equal at the full interval."""
    cond, uncond, weight = GaussianData(0.4, 0.3), GaussianData(-0.2, 0.3), 2.0

    def conditional(z, t):
        return cond.eps(z, t)

    def both(z, t):
        return cond.eps(z, t), uncond.eps(z, t)

    x = torch.randn(1, 64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sample = SAMPLERS["unipc"]
    full = sample(guided_denoiser(conditional, both, weight), x, 30)
    widths = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 40.0]
    errors = []
    for w in widths:
        interval = GuidanceInterval(-w, w)
        out = sample(guided_denoiser(conditional, both, weight, interval), x, 30)
        assert torch.isfinite(out).all()  # the multistep solver copes with the switches
        errors.append(float((out - full).abs().max()))
    assert all(a > b for a, b in zip(errors[:-1], errors[1:-1], strict=False)), errors
    assert errors[-1] == 0.0 and errors[0] > 0.1


def test_render_takes_the_interval(tiny_synth, waltz):
    a = tiny_synth.render(waltz, steps=3, length=5.0, guidance_interval="-5,3")
    b = tiny_synth.render(waltz, steps=3, length=5.0)
    assert a.audio.shape == b.audio.shape and not np.array_equal(a.mel, b.mel)
    with pytest.raises(SpectrosynthError, match="guidance-interval"):
        tiny_synth.render(waltz, steps=3, length=5.0, guidance_interval="wide")


# --------------------------------------------------------------------------------------------------------
# The command line


def test_render_and_batch_take_the_option(tmp_path, tiny_model, waltz):
    import shutil

    import soundfile as sf
    from typer.testing import CliRunner

    from spectrosynth.batch import RenderSettings
    from spectrosynth.cli import app

    runner = CliRunner()
    common = ["--model", str(tiny_model), "--device", "cpu", "--steps", "3", "--duration", "6"]
    plain, limited = tmp_path / "plain.wav", tmp_path / "limited.wav"
    assert runner.invoke(app, ["render", str(waltz), str(plain), *common]).exit_code == 0
    result = runner.invoke(app, ["render", str(waltz), str(limited), *common, "--guidance-interval", "-5,3"])
    assert result.exit_code == 0, result.output
    assert not np.array_equal(sf.read(plain)[0], sf.read(limited)[0])
    bad = runner.invoke(
        app, ["render", str(waltz), str(tmp_path / "x.wav"), *common, "--guidance-interval", "5"]
    )
    assert bad.exit_code != 0 and "--guidance-interval takes LO,HI" in bad.stderr
    assert bad.stderr.count("\n") == 1 and not (tmp_path / "x.wav").exists()

    songs = tmp_path / "songs"
    songs.mkdir()
    shutil.copy(waltz, songs / "waltz.mid")
    out = tmp_path / "out"
    result = runner.invoke(app, ["batch", str(songs), str(out), *common, "--guidance-interval", "-5,3", "-q"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(sf.read(out / "waltz.wav")[0], sf.read(limited)[0])
    # recorded with the run's settings (and left out when full, so older runs keep their digest)
    recorded = json.loads((out / ".spectrosynth" / "run.json").read_text())
    assert "-5,3" in json.dumps(recorded)
    full = RenderSettings("m", None, "auto", "unipc", 20, 2.0, 0)
    assert "guidance_interval" not in full.to_dict()
    assert (
        full.digest != RenderSettings("m", None, "auto", "unipc", 20, 2.0, 0, guidance_interval="-5,3").digest
    )
