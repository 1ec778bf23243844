"""The engine end to end on a tiny random checkpoint in the published layout, through the Python API."""

import numpy as np
import pytest
import torch

from spectrosynth import Synthesizer
from spectrosynth.constants import FRAMES_PER_SEGMENT, SAMPLE_RATE, SAMPLES_PER_SEGMENT
from spectrosynth.errors import SpectrosynthError
from spectrosynth.midi import read_midi
from spectrosynth.pipeline import Progress, resolve_device, resolve_dtype, scale_features, scale_to_log_mel
from spectrosynth.tokens import tokenize


def test_renders_a_real_multitrack_song_to_16khz_audio(tiny_synth, complex_midi):
    events = []
    # 18 tracks with drums; 58 segments. 2 steps keep it quick; the length does not depend on steps.
    result = tiny_synth.render(complex_midi, steps=2, seed=0, callback=events.append)
    segments = len(tokenize(read_midi(complex_midi)))
    assert segments == 58 and len(result.segments) == segments
    assert result.sample_rate == SAMPLE_RATE == 16000
    assert result.audio.dtype == np.float32 and result.audio.shape == (segments * SAMPLES_PER_SEGMENT,)
    assert result.mel.dtype == np.float32 and result.mel.shape == (segments * FRAMES_PER_SEGMENT, 128)
    assert np.isfinite(result.audio).all() and result.audio.std() > 0
    assert result.mel.min() >= np.log(1e-5) - 1e-5 and result.mel.max() <= 4.0 + 1e-5
    assert len(events) == segments * 2
    assert events[0] == Progress(0, segments, 1, 2) and events[-1] == Progress(segments - 1, segments, 2, 2)
    assert [e.fraction for e in events] == sorted(e.fraction for e in events) and events[-1].fraction == 1.0


def test_same_seed_same_spectrogram_other_seed_other(tiny_synth):
    tokens = [[1135, 1064, 1134, 53, 1133, 1067, 1], [1134, 1]]
    a = tiny_synth.generate_mel(tokens, steps=4, seed=3)
    b = tiny_synth.generate_mel(tokens, steps=4, seed=3)
    c = tiny_synth.generate_mel(tokens, steps=4, seed=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_explicit_generator_equals_seed(tiny_synth):
    tokens = [[1134, 1]]
    a = tiny_synth.generate_mel(tokens, steps=3, seed=11)
    b = tiny_synth.generate_mel(tokens, steps=3, generator=torch.Generator().manual_seed(11))
    np.testing.assert_array_equal(a, b)


def test_context_links_segments(tiny_synth):
    # The second segment is conditioned on the first: changing only the first changes the second.
    second = [1134, 1]
    a = tiny_synth.generate_mel([[1135, 1064, 1134, 1], second], steps=3, seed=0)
    b = tiny_synth.generate_mel([[1135, 1080, 1134, 1], second], steps=3, seed=0)
    assert np.abs(a[:256] - b[:256]).max() > 0 and np.abs(a[256:] - b[256:]).max() > 0


def test_bfloat16_stays_close_to_float32(tiny_model):
    tokens = [[1135, 1064, 1134, 53, 1133, 1067, 1]]
    f32 = Synthesizer.from_pretrained(tiny_model, device="cpu", dtype="float32").generate_mel(
        tokens, 5, seed=1
    )
    bf16 = Synthesizer.from_pretrained(tiny_model, device="cpu", dtype="bfloat16").generate_mel(
        tokens, 5, seed=1
    )
    assert bf16.dtype == np.float32
    assert np.abs(f32 - bf16).mean() < 0.25  # log-mel units; bf16 has 8 bits of mantissa


def test_feature_scaling_round_trip():
    log_mel = torch.linspace(np.log(1e-5), 4.0, 50)
    torch.testing.assert_close(scale_to_log_mel(scale_features(log_mel)), log_mel, atol=1e-5, rtol=0)
    assert scale_features(torch.tensor([-100.0, 100.0])).tolist() == [-1.0, 1.0]
    assert scale_features(torch.tensor([0.0])).item() == pytest.approx(0.4843, abs=1e-4)  # spec §5


def test_device_and_dtype_choices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SpectrosynthError, match="--device cpu"):
            resolve_device("cuda")
    with pytest.raises(SpectrosynthError, match="unknown device"):
        resolve_device("tpu:0:x")
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(SpectrosynthError, match="float16 is for CUDA"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(SpectrosynthError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpectrosynthError, match="no such model folder"):
        Synthesizer.from_pretrained(tmp_path / "nope", device="cpu")
