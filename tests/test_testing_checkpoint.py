"""The random checkpoints of spectrosynth.testing match the published layout, checked against diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spectrosynth.testing import (
    base_configs,
    model_index,
    random_state_dict,
    scheduler_config,
    tiny_configs,
    write_checkpoint,
    write_vocoder,
)
from spectrosynth.weights import (
    COMPONENTS,
    check_state_dict,
    missing_files,
    parameter_count,
    published_keys,
    read_config,
    read_model_index,
    read_state_dict,
)

pytestmark = pytest.mark.reference

diffusers = pytest.importorskip("diffusers")
spectrogram_diffusion = pytest.importorskip("diffusers.pipelines.deprecated.spectrogram_diffusion")

MODULES = {
    "notes_encoder": spectrogram_diffusion.SpectrogramNotesEncoder,
    "continuous_encoder": spectrogram_diffusion.SpectrogramContEncoder,
    "decoder": diffusers.T5FilmDecoder,
}


def init_args(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.fixture(scope="module", params=["bin", "safetensors"])
def tiny_folder(request, tmp_path_factory) -> Path:
    return write_checkpoint(
        tmp_path_factory.mktemp(request.param), "tiny", seed=3, weights_format=request.param
    )


def test_layout_is_complete_and_configs_are_as_published(tiny_folder):
    assert missing_files(tiny_folder) == []
    assert read_model_index(tiny_folder) == model_index()
    assert read_config(tiny_folder, "scheduler") == scheduler_config()
    for component in COMPONENTS:
        config = read_config(tiny_folder, component)
        assert config == tiny_configs()[component]
        assert (
            config["_class_name"]
            == {
                "notes_encoder": "SpectrogramNotesEncoder",
                "continuous_encoder": "SpectrogramContEncoder",
                "decoder": "T5FilmDecoder",
            }[component]
        )
        assert "_diffusers_version" in config
    suffix = ".safetensors" if "safetensors" in tiny_folder.name else ".bin"
    assert {p.suffix for p in tiny_folder.glob("*/diffusion_pytorch_model.*")} == {suffix}


@pytest.mark.parametrize("component", COMPONENTS)
def test_tiny_checkpoint_loads_into_diffusers_with_strict_keys(tiny_folder, component):
    model, info = MODULES[component].from_pretrained(
        tiny_folder, subfolder=component, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = read_config(tiny_folder, component)
    expected = published_keys(component, config)
    state = model.state_dict()
    assert list(state) == list(expected)  # same names, in module order
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    written = random_state_dict(component, config, seed=3)
    for key, value in state.items():
        assert torch.equal(value, written[key]), key
    if component == "decoder":
        assert model.config.max_decoder_noise_time == 20000.0


def test_scheduler_loads_into_diffusers(tiny_folder):
    scheduler = diffusers.DDPMScheduler.from_pretrained(tiny_folder, subfolder="scheduler")
    for key, value in scheduler_config().items():
        if not key.startswith("_"):
            assert scheduler.config[key] == value, key


def test_vocoder_loads_into_diffusers_and_has_the_published_signature(tiny_folder):
    melgan = diffusers.OnnxRuntimeModel.from_pretrained(tiny_folder / "melgan")
    features = np.random.default_rng(0).normal(-5.0, 3.0, (1, 256, 128)).astype(np.float32)
    (audio,) = melgan(input_features=features)
    assert audio.shape == (1, 81920) and audio.dtype == np.float32
    assert 0.01 < float(audio.std()) < 1.0 and float(np.abs(audio).max()) <= 1.0


def test_vocoder_shapes_with_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = write_vocoder(tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_features"]
    for shape, samples in (((1, 256, 128), (1, 81920)), ((2, 7, 128), (2, 2240))):
        (audio,) = session.run(None, {"input_features": np.zeros(shape, np.float32) - 4.0})
        assert audio.shape == samples and audio.dtype == np.float32
    # Temporal context: changing one frame changes the samples of its neighbours too.
    x = np.zeros((1, 7, 128), np.float32)
    y = x.copy()
    y[0, 3] = 1.0
    a, b = (session.run(None, {"input_features": v})[0].reshape(7, 320) for v in (x, y))
    changed = np.flatnonzero(np.abs(a - b).max(axis=1) > 0)
    assert changed.tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_fresh_diffusers_modules_pass_check_state_dict(tmp_path, safe_serialization):
    configs = tiny_configs()
    for component, cls in MODULES.items():
        torch.manual_seed(0)
        cls(**init_args(configs[component])).save_pretrained(
            tmp_path / component, safe_serialization=safe_serialization
        )
        state = read_state_dict(tmp_path, component)
        check_state_dict(state, published_keys(component, configs[component]), component)


def test_published_keys_equal_diffusers_base_modules_without_allocating():
    configs = base_configs()
    for component, cls in MODULES.items():
        with torch.device("meta"):
            model = cls(**init_args(configs[component]))
        state = model.state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == published_keys(component, configs[component])


def test_published_parameter_counts():
    configs = base_configs()
    counts = {c: parameter_count(c, configs[c]) for c in COMPONENTS}
    assert counts == {"notes_encoder": 87_706_368, "continuous_encoder": 85_248_768, "decoder": 238_710_528}
    assert {c: len(published_keys(c, configs[c])) for c in COMPONENTS} == {
        "notes_encoder": 111,
        "continuous_encoder": 111,
        "decoder": 198,
    }
    assert sum(counts.values()) == 411_665_664


def test_base_configs_are_the_published_values():
    configs = base_configs()
    notes = configs["notes_encoder"]
    assert init_args(notes) == {
        "max_length": 2048,
        "vocab_size": 1536,
        "d_model": 768,
        "num_layers": 12,
        "num_heads": 12,
        "d_kv": 64,
        "d_ff": 2048,
        "dropout_rate": 0.1,
        "feed_forward_proj": "gated-gelu",
        "is_decoder": False,
    }
    context = init_args(configs["continuous_encoder"])
    assert context.pop("input_dims") == 128 and context.pop("targets_context_length") == 256
    assert context == {k: v for k, v in init_args(notes).items() if k not in ("max_length", "vocab_size")}
    assert init_args(configs["decoder"]) == {
        "input_dims": 128,
        "targets_length": 256,
        "max_decoder_noise_time": 20000.0,
        "d_model": 768,
        "num_layers": 12,
        "num_heads": 12,
        "d_kv": 64,
        "d_ff": 2048,
        "dropout_rate": 0.1,
    }
    tiny = tiny_configs()
    assert tiny["notes_encoder"]["max_length"] == 2048 and tiny["notes_encoder"]["vocab_size"] == 1536
    assert (
        tiny["decoder"]["targets_length"] == 256
        and tiny["continuous_encoder"]["targets_context_length"] == 256
    )


def test_random_weights_are_deterministic_and_seeded():
    config = tiny_configs()["decoder"]
    a, b = random_state_dict("decoder", config, 0), random_state_dict("decoder", config, 0)
    c = random_state_dict("decoder", config, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["spec_out.weight"], c["spec_out.weight"])
    assert all(v.dtype == torch.float32 for v in a.values())
    notes = random_state_dict("notes_encoder", tiny_configs()["notes_encoder"], 0)
    assert not torch.equal(notes["layer_norm.weight"], a["decoder_norm.weight"])  # components differ too


def test_written_files_are_byte_identical_for_the_same_seed(tmp_path):
    first = write_checkpoint(tmp_path / "a", seed=5, weights_format="safetensors")
    second = write_checkpoint(tmp_path / "b", seed=5, weights_format="safetensors")
    for path in sorted(p for p in first.rglob("*") if p.is_file()):
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes(), path
    assert json.loads((first / "decoder" / "config.json").read_text())["_class_name"] == "T5FilmDecoder"


def test_activations_stay_order_one_through_twelve_layers():
    """Full-depth (12-layer) random models, narrow so the test is fast: no blow-up, no collapse."""
    configs = tiny_configs()
    models = {}
    for component, cls in MODULES.items():
        config = {**init_args(configs[component]), "num_layers": 12}
        models[component] = cls(**config).eval()
        models[component].load_state_dict(random_state_dict(component, config, seed=0))
    residual = []
    for component in ("notes_encoder", "continuous_encoder"):
        for layer in models[component].encoders:
            layer.register_forward_hook(lambda m, i, o: residual.append(o[0].pow(2).mean().sqrt().item()))
    for layer in models["decoder"].decoders:
        layer.register_forward_hook(lambda m, i, o: residual.append(o[0].pow(2).mean().sqrt().item()))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, 1391, (1, 256), generator=g)  # a short segment: the encoder takes any length
    tokens[:, 200:] = 0
    with torch.no_grad():
        notes = models["notes_encoder"](tokens, tokens > 0)
        context = models["continuous_encoder"](
            torch.rand(1, 256, 128, generator=g) * 2 - 1, torch.ones(1, 256, dtype=torch.bool)
        )
        for t in (0.01, 0.99):
            eps = models["decoder"](
                [notes, context], torch.randn(1, 256, 128, generator=g), torch.tensor([t])
            )
            assert 0.3 < eps.pow(2).mean().sqrt().item() < 3.0
    assert len(residual) == 12 * 2 + 12 * 2
    assert all(0.5 < r < 6.0 for r in residual), residual
