"""The converted copy kept for quick start-up (spectrosynth.converted): used when it matches, equal to a
fresh conversion bit for bit, made again when the model changes or the copy is damaged, and never in the way
of a render."""

import numpy as np
import pytest
import torch

from spectrosynth import Synthesizer, converted, weights
from spectrosynth.precision import int8_engine, is_int8
from spectrosynth.testing import write_checkpoint

PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)
TOKENS = [[1, 2, 3, 1135, 1136, 1137], [1, 1200, 1201, 1]]


@pytest.fixture
def model(tmp_path):
    return write_checkpoint(tmp_path / "model", "tiny", seed=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(folder))
    return folder / "converted"


def _mel(synth):
    return synth.generate_mel(TOKENS, steps=3, seed=0)


def _int8_state(decoder) -> dict:
    """Every dynamically quantized linear layer's int8 weights, scales, zero points and bias."""
    state = {}
    for name, module in decoder.named_modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            w = module.weight()
            state[f"{name}.int8"] = w.int_repr()
            state[f"{name}.scales"] = (
                w.q_per_channel_scales() if w.qscheme() in PER_CHANNEL else torch.tensor(w.q_scale())
            )
            state[f"{name}.bias"] = module.bias()
    return state


def _one_pass(decoder) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 256, 128, generator=g), torch.tensor([0.3, 0.8])
    encodings = torch.randn(2, 40, decoder.config.d_model, generator=g)
    with torch.no_grad():
        return decoder(x, decoder.conditioning(t), decoder.cross_keys_values(encodings))


def _entries(cache):
    return sorted(p.name.split("-")[0] for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize(
    "precision",
    ["bfloat16", pytest.param("int8", marks=pytest.mark.skipif(int8_engine() is None, reason="no int8"))],
)
def test_second_load_uses_the_copy_and_renders_the_same(model, cache, monkeypatch, precision):
    full_synth = Synthesizer.from_pretrained(model, device="cpu", dtype="float32")
    fresh = Synthesizer.from_pretrained(model, device="cpu", dtype=precision)
    assert _entries(cache) == [precision]
    expected = _mel(fresh)
    kept = converted.components(precision)
    read = weights.read_checked_state_dict

    def only_unkept(folder, component, *args, **kwargs):
        assert component not in kept, f"{component} was read from the published file"
        return read(folder, component, *args, **kwargs)

    monkeypatch.setattr(weights, "read_checked_state_dict", only_unkept)
    again = Synthesizer.from_pretrained(model, device="cpu", dtype=precision)
    got = _mel(again)
    assert again.precision == precision
    if precision == "int8":
        assert is_int8(again.decoder) == is_int8(fresh.decoder) > 0
        # The same int8 weights and scales. fbgemm's products may round differently between two packings of
        # them (on one thread), and the tiny random model's saturated renders amplify that into flipped bins,
        # so the weights themselves are compared, and the renders only as a whole.
        packed = [_int8_state(d) for d in (again.decoder, fresh.decoder)]
        assert packed[0].keys() == packed[1].keys() and packed[0]
        for name, tensor in packed[0].items():
            assert (tensor is None and packed[1][name] is None) or torch.equal(tensor, packed[1][name]), name
        # one decoder pass (not chaotic, unlike a saturating render) agrees far better than int8 with float32
        passes = [_one_pass(d) for d in (again.decoder, fresh.decoder, full_synth.decoder)]
        assert (passes[0] - passes[1]).abs().max() < 0.05 * (passes[1] - passes[2]).abs().max()
    else:
        assert np.array_equal(got, expected)


def test_float32_needs_no_copy(model, cache):
    Synthesizer.from_pretrained(model, device="cpu", dtype="float32")
    assert _entries(cache) == []


def test_a_changed_model_is_converted_again(model, cache):
    first = _mel(Synthesizer.from_pretrained(model, device="cpu", dtype="bfloat16"))
    write_checkpoint(model, "tiny", seed=2)  # new weights in the same folder
    changed = Synthesizer.from_pretrained(model, device="cpu", dtype="bfloat16")
    reference = write_checkpoint(model.parent / "other", "tiny", seed=2)
    fresh = Synthesizer.from_pretrained(reference, device="cpu", dtype="bfloat16")
    assert not np.array_equal(_mel(changed), first) and np.array_equal(_mel(changed), _mel(fresh))
    assert len(_entries(cache)) == 3  # the old copy, and one per (folder, weights)


def test_a_damaged_copy_is_ignored_and_made_again(model, cache):
    expected = _mel(Synthesizer.from_pretrained(model, device="cpu", dtype="bfloat16"))
    (entry,) = cache.iterdir()
    decoder = entry / "decoder.safetensors"
    decoder.write_bytes(decoder.read_bytes()[:1000])
    assert converted.load(model, "bfloat16") is None
    assert np.array_equal(_mel(Synthesizer.from_pretrained(model, device="cpu", dtype="bfloat16")), expected)
    assert converted.load(model, "bfloat16") is not None  # rewritten whole


def test_a_copy_that_does_not_fit_the_networks_is_refused(model, cache, tmp_path):
    Synthesizer.from_pretrained(model, device="cpu", dtype="bfloat16")
    (entry,) = cache.iterdir()
    from safetensors.torch import load_file, save_file

    path = entry / "decoder.safetensors"
    from safetensors import safe_open

    with safe_open(path, framework="pt") as g:
        metadata = g.metadata()
    tensors = load_file(path)
    tensors.pop(next(iter(tensors)))  # one tensor missing, the fingerprint intact
    save_file(tensors, path, metadata=metadata)
    assert converted.load(model, "bfloat16") is None


def test_off_and_unwritable_caches_cost_only_time(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTROSYNTH_CACHE", "off")
    assert converted.cache_root() is None
    Synthesizer.from_pretrained(model, device="cpu", dtype="bfloat16")
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(blocker))
    synth = Synthesizer.from_pretrained(model, device="cpu", dtype="bfloat16")
    assert np.isfinite(_mel(synth)).all() and blocker.is_file()
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".bfloat16-")]
    assert leftovers == []
