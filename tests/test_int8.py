"""--dtype int8: the decoder's linear layers dynamically quantized (torch.ao, fbgemm/oneDNN on x86): really
taken, close to float32 within the documented bound on the published sizes, and refused where it cannot
run."""

import numpy as np
import pytest
import torch

from spectrosynth import Synthesizer, models
from spectrosynth.errors import SpectrosynthError
from spectrosynth.precision import int8_engine, int8_targets, is_int8, quantize_int8
from spectrosynth.testing import base_configs, random_state_dict

pytestmark = pytest.mark.skipif(int8_engine() is None, reason="this torch build has no int8 engine")


@pytest.fixture(scope="module")
def int8_synth(tiny_model):
    return Synthesizer.from_pretrained(tiny_model, device="cpu", dtype="int8")


def test_the_int8_path_is_really_taken(int8_synth, tiny_synth):
    decoder = int8_synth.decoder
    assert int8_synth.precision == "int8" and int8_synth.dtype == torch.float32
    quantized = is_int8(decoder)
    # every layer's attention (fused self q/k/v and o; cross q, k, v, o) and feed-forward (fused wi, wo)
    assert quantized == 8 * len(decoder.layers)
    assert is_int8(tiny_synth.decoder) == 0 and tiny_synth.precision == "float32"
    assert is_int8(int8_synth.notes_encoder) == 0  # the encoders run once per segment: float32
    weight = decoder.layers[0].mlp.wo.weight()
    assert weight.dtype == torch.qint8


def test_int8_renders_close_to_float32_but_not_equal(int8_synth, tiny_synth, waltz):
    from spectrosynth.midi import read_midi
    from spectrosynth.tokens import prepare

    tokens = [s.tokens for s in prepare(read_midi(waltz)).segments[:2]]
    a = int8_synth.generate_mel(tokens, steps=5, seed=0)
    b = tiny_synth.generate_mel(tokens, steps=5, seed=0)
    assert np.isfinite(a).all() and a.shape == b.shape
    assert not np.array_equal(a, b)  # not silently float32
    assert np.abs(a - b).mean() < 0.1 * np.abs(b - b.mean()).mean()


def test_int8_is_for_cpus(tiny_model):
    if torch.cuda.is_available():
        with pytest.raises(SpectrosynthError, match="int8 is for CPUs"):
            Synthesizer.from_pretrained(tiny_model, device="cuda", dtype="int8")
    with pytest.raises(SpectrosynthError, match="int8 is for CPUs"):
        Synthesizer(*_nets(tiny_model), None, None, "cpu", torch.bfloat16, int8=True)


def _nets(folder):
    from spectrosynth import weights

    out = []
    for component in ("notes_encoder", "continuous_encoder", "decoder"):
        config, state = weights.read_checked_state_dict(folder, component)
        out.append(models.build(component, config, state))
    return out


@pytest.mark.slow
def test_int8_pass_within_the_documented_bound_on_the_published_sizes():
    """One guided pass of the base-size decoder (random weights, 2304 cross-attention keys): int8 against
    float32. docs/performance.md gives the bound: relative L2 error below 0.2 per pass (measured 0.12)."""
    torch.manual_seed(0)
    config = base_configs()["decoder"]
    decoder = models.build("decoder", config, random_state_dict("decoder", config, 0))
    decoder.fuse_projections()
    z, encodings = torch.randn(1, 256, 128), 0.1 * torch.randn(1, 2304, 768)
    with torch.inference_mode():
        films = decoder.conditioning(torch.tensor([0.5]))
        ref = decoder(z, films, decoder.cross_keys_values(encodings), None, unconditional=True)
        targets = len(int8_targets(decoder))
        quantize_int8(decoder)
        assert is_int8(decoder) == targets == 8 * 12
        out = decoder(z, films, decoder.cross_keys_values(encodings), None, unconditional=True)
    relative = float((out - ref).norm() / ref.norm())
    assert 1e-3 < relative < 0.2, relative
