"""Locating, reading and checking weights: local folders, the Hugging Face cache, bad files; no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import requests
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import are_progress_bars_disabled

from spectrosynth.errors import (
    HubError,
    ModelLayoutError,
    ModelNotFoundError,
    SpectrosynthError,
    WeightsError,
)
from spectrosynth.testing import random_state_dict, tiny_configs, write_checkpoint
from spectrosynth.weights import (
    COMPONENTS,
    DEFAULT_MODEL,
    check_state_dict,
    missing_files,
    published_keys,
    read_config,
    read_model_index,
    read_state_dict,
    resolve_model,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message.strip() == message and message
    return message


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "model", "tiny", seed=0)


@pytest.fixture
def tiny(tiny_template, tmp_path) -> Path:
    """A private copy each test may damage."""
    return Path(shutil.copytree(tiny_template, tmp_path / "model"))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache in tmp_path and an unreachable hub, whatever the environment says."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads these at import time; the functions read them from `constants` at call time.
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "ENDPOINT", CLOSED_PORT)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return cache


def offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def cache_snapshot(
    cache: Path, template: Path, repo_id: str = DEFAULT_MODEL, ref: str | None = "main"
) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    if ref is not None:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / ref).write_text(SHA)
    return Path(shutil.copytree(template, repo / "snapshots" / SHA))


# ---------------------------------------------------------------------------------------------------- local


def test_local_folder_is_used_as_is(tiny):
    assert resolve_model(tiny) == tiny
    assert resolve_model(str(tiny)) == tiny
    assert missing_files(tiny) == []


def test_local_folder_with_missing_parts_names_them(tiny):
    (tiny / "decoder" / "diffusion_pytorch_model.bin").unlink()
    (tiny / "melgan" / "model.onnx").unlink()
    with pytest.raises(ModelLayoutError) as e:
        resolve_model(tiny)
    message = one_line(e.value)
    assert "decoder/diffusion_pytorch_model.safetensors (or .bin)" in message
    assert "melgan/model.onnx" in message and "notes_encoder" not in message


def test_a_folder_without_a_vocoder_says_where_to_get_one(tiny):
    (tiny / "melgan" / "model.onnx").unlink()
    with pytest.raises(ModelLayoutError) as e:
        resolve_model(tiny)
    message = one_line(e.value)
    assert "has no vocoder (melgan/model.onnx), as a model trained from scratch has none" in message
    assert "spectrosynth download" in message and "--vocoder griffin-lim" in message


def test_a_folder_without_a_vocoder_is_complete_for_griffin_lim(tiny):
    (tiny / "melgan" / "model.onnx").unlink()
    assert missing_files(tiny, vocoder=False) == [] and missing_files(tiny) == ["melgan/model.onnx"]
    assert resolve_model(tiny, vocoder=False) == tiny
    (tiny / "decoder" / "config.json").unlink()
    with pytest.raises(ModelLayoutError, match="missing decoder/config.json; copy"):
        resolve_model(tiny, vocoder=False)


def test_empty_folder_lists_everything(tmp_path):
    with pytest.raises(ModelLayoutError) as e:
        resolve_model(tmp_path)
    message = one_line(e.value)
    for part in ("model_index.json", "scheduler/scheduler_config.json", "continuous_encoder/config.json"):
        assert part in message


@pytest.mark.parametrize("name", ["/no/such/folder", "./missing-model", "missing", "a/b/c"])
def test_a_missing_path_that_is_no_repo_id(name):
    with pytest.raises(ModelNotFoundError, match="no such model folder") as e:
        resolve_model(name)
    one_line(e.value)


def test_a_missing_path_object_is_never_sent_to_the_hub(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        resolve_model(tmp_path / "google" / "music-spectrogram-diffusion")


def test_a_file_is_not_a_model_folder(tiny):
    with pytest.raises(ModelNotFoundError, match="is a file") as e:
        resolve_model(tiny / "model_index.json")
    one_line(e.value)


def test_configs_and_model_index(tiny):
    assert read_config(tiny, "decoder")["max_decoder_noise_time"] == 20000.0
    assert read_config(tiny, "scheduler")["beta_schedule"] == "squaredcos_cap_v2"
    assert read_config(tiny, "scheduler", "scheduler_config.json") == read_config(tiny, "scheduler")
    assert read_model_index(tiny)["decoder"] == ["diffusers", "T5FilmDecoder"]
    (tiny / "decoder" / "config.json").write_text("{ not json")
    with pytest.raises(WeightsError, match="not valid JSON") as e:
        read_config(tiny, "decoder")
    one_line(e.value)
    (tiny / "notes_encoder" / "config.json").unlink()
    with pytest.raises(ModelLayoutError):
        read_config(tiny, "notes_encoder")


# ---------------------------------------------------------------------------------------------- state dicts


def test_read_bin(tiny):
    config = tiny_configs()["decoder"]
    state = read_state_dict(tiny, "decoder")
    expected = random_state_dict("decoder", config, 0)
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    check_state_dict(state, published_keys("decoder", config), "decoder")


@pytest.fixture
def load_calls(monkeypatch) -> list[dict]:
    """Records the keyword arguments of every torch.load call."""
    calls, real = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_read_bin_is_memory_mapped_and_weights_only(tiny, load_calls):
    read_state_dict(tiny, "notes_encoder")
    assert load_calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


def test_read_legacy_non_zip_bin(tiny, load_calls):
    state = random_state_dict("continuous_encoder", tiny_configs()["continuous_encoder"], 7)
    path = tiny / "continuous_encoder" / "diffusion_pytorch_model.bin"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = read_state_dict(tiny, "continuous_encoder")
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert load_calls[-1]["mmap"] is False


def test_safetensors_is_preferred_over_bin(tiny):
    from safetensors.torch import save_file

    config = tiny_configs()["notes_encoder"]
    other = random_state_dict("notes_encoder", config, 1)
    save_file(other, tiny / "notes_encoder" / "diffusion_pytorch_model.safetensors")
    state = read_state_dict(tiny, "notes_encoder")
    assert all(torch.equal(state[k], other[k]) for k in other)
    (tiny / "notes_encoder" / "diffusion_pytorch_model.bin").unlink()  # safetensors alone is a full layout
    assert resolve_model(tiny) == tiny


def test_read_safetensors_checkpoint(tmp_path):
    folder = write_checkpoint(tmp_path / "st", weights_format="safetensors")
    for component in COMPONENTS:
        config = tiny_configs()[component]
        state = read_state_dict(folder, component)
        check_state_dict(state, published_keys(component, config), component)
        assert all(torch.equal(state[k], v) for k, v in random_state_dict(component, config, 0).items())


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"this is not a checkpoint at all\n" * 10,
        b"<!DOCTYPE html><html><body>504 Gateway Time-out</body></html>",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 955000000\n",
    ],
    ids=["empty", "text", "html", "lfs-pointer"],
)
@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"])
def test_a_damaged_weights_file_gives_one_line(tiny, content, name):
    path = tiny / "decoder" / name
    path.write_bytes(content)
    with pytest.raises(WeightsError) as e:
        read_state_dict(tiny, "decoder")
    message = one_line(e.value)
    assert str(path) in message and "download" in message


def test_a_truncated_bin_gives_one_line(tiny):
    path = tiny / "decoder" / "diffusion_pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError) as e:
        read_state_dict(tiny, "decoder")
    assert str(path) in one_line(e.value)


def test_a_pickle_that_is_no_state_dict(tiny):
    path = tiny / "decoder" / "diffusion_pytorch_model.bin"
    torch.save({"step": 500000, "state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(WeightsError, match="state_dict") as e:
        read_state_dict(tiny, "decoder")
    one_line(e.value)


def test_missing_weights_file(tiny):
    (tiny / "decoder" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(ModelLayoutError) as e:
        read_state_dict(tiny, "decoder")
    one_line(e.value)


def test_check_state_dict_reports_missing_unexpected_and_wrong_shapes():
    config = tiny_configs()["notes_encoder"]
    expected = published_keys("notes_encoder", config)
    state = random_state_dict("notes_encoder", config, 0)
    check_state_dict(state, expected, "notes_encoder")
    for i in range(5):
        del state[
            f"encoders.1.layer.0.SelfAttention.{'qkvo'[i % 4]}.weight" if i < 4 else "layer_norm.weight"
        ]
    state["encoders.2.layer.0.SelfAttention.relative_attention_bias.weight"] = torch.zeros(32, 2)
    state["token_embedder.weight"] = torch.zeros(1024, 32)
    with pytest.raises(WeightsError) as e:
        check_state_dict(state, expected, "notes_encoder")
    message = one_line(e.value)
    assert message.startswith("notes_encoder weights")
    assert "5 missing (encoders.1.layer.0.SelfAttention.q.weight" in message and "+2 more" in message
    assert "1 unexpected (encoders.2.layer.0.SelfAttention.relative_attention_bias.weight)" in message
    assert "1 with the wrong shape (token_embedder.weight [1024, 32] not [1536, 32])" in message


def test_check_state_dict_against_another_size():
    small = {**tiny_configs()["decoder"], "num_layers": 1}
    with pytest.raises(WeightsError, match="16 missing") as e:
        check_state_dict(
            random_state_dict("decoder", small, 0),
            published_keys("decoder", tiny_configs()["decoder"]),
            "decoder",
        )
    one_line(e.value)


def test_published_keys_needs_the_config_fields():
    with pytest.raises(WeightsError, match="lacks d_ff") as e:
        published_keys("decoder", {k: v for k, v in tiny_configs()["decoder"].items() if k != "d_ff"})
    one_line(e.value)
    with pytest.raises(ValueError):
        published_keys("melgan", {})


# ------------------------------------------------------------------------------------------------------ hub


def test_cached_snapshot_offline(hub, monkeypatch, tiny_template):
    snapshot = cache_snapshot(hub, tiny_template)
    offline(monkeypatch)
    assert resolve_model(DEFAULT_MODEL) == snapshot
    assert resolve_model() == snapshot
    assert resolve_model(DEFAULT_MODEL, revision=SHA) == snapshot


def test_complete_cached_snapshot_needs_no_network(hub, tiny_template):
    snapshot = cache_snapshot(hub, tiny_template)
    assert not hf_constants.HF_HUB_OFFLINE  # online, but the hub is unreachable: the cache is enough
    assert resolve_model(DEFAULT_MODEL, progress=False) == snapshot


def test_hf_home_decides_the_cache(monkeypatch, tmp_path, tiny_template):
    """The cache location comes from huggingface_hub, which derives it from HF_HOME."""
    import importlib

    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    fresh = importlib.reload(hf_constants)
    try:
        assert Path(fresh.HF_HUB_CACHE) == tmp_path / "home" / "hub"
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        snapshot = cache_snapshot(Path(fresh.HF_HUB_CACHE), tiny_template)
        assert resolve_model(DEFAULT_MODEL) == snapshot
    finally:
        monkeypatch.undo()
        importlib.reload(hf_constants)


def test_offline_and_not_cached(hub, monkeypatch):
    offline(monkeypatch)
    with pytest.raises(HubError) as e:
        resolve_model(DEFAULT_MODEL)
    message = one_line(e.value)
    assert "HF_HUB_OFFLINE" in message and DEFAULT_MODEL in message and str(hub) in message
    assert "--model" in message


def test_unreachable_and_not_cached(hub):
    with pytest.raises(HubError) as e:
        resolve_model(DEFAULT_MODEL, progress=False)
    message = one_line(e.value)
    assert message.startswith(f"cannot reach the Hugging Face hub and {DEFAULT_MODEL} is not in the cache")
    assert str(hub) in message and "spectrosynth download" in message and "--model /path/to/folder" in message


def test_incomplete_cache_offline(hub, monkeypatch, tiny_template):
    snapshot = cache_snapshot(hub, tiny_template)
    (snapshot / "melgan" / "model.onnx").unlink()
    offline(monkeypatch)
    with pytest.raises(HubError, match="incomplete") as e:
        resolve_model(DEFAULT_MODEL)
    assert "melgan/model.onnx" in one_line(e.value)


def test_incomplete_cache_unreachable(hub, tiny_template):
    snapshot = cache_snapshot(hub, tiny_template)
    (snapshot / "decoder" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(HubError, match="cannot reach the Hugging Face hub and the cached copy") as e:
        resolve_model(DEFAULT_MODEL)
    one_line(e.value)


class FakeHub:
    """Stands in for HfApi.model_info and snapshot_download, serving a tiny checkpoint."""

    def __init__(
        self, cache: Path, template: Path, files: list[str] | None = None, error: Exception | None = None
    ):
        self.cache, self.template, self.error = cache, template, error
        self.files = (
            files if files is not None else [str(p.relative_to(template)) for p in template.rglob("*.*")]
        )
        self.allow_patterns: list[str] | None = None
        self.bars_disabled: bool | None = None

    def model_info(self, repo_id, revision=None, **kwargs):
        if self.error is not None:
            raise self.error
        from types import SimpleNamespace

        return SimpleNamespace(
            sha=SHA, siblings=[SimpleNamespace(rfilename=f) for f in self.files + ["README.md"]]
        )

    def snapshot_download(
        self, repo_id, revision=None, local_files_only=False, allow_patterns=None, **kwargs
    ):
        if local_files_only:
            raise LocalEntryNotFoundError("nothing cached")
        self.allow_patterns = list(allow_patterns)
        self.bars_disabled = are_progress_bars_disabled()
        target = self.cache / "snapshot"
        for name in self.allow_patterns:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.template / name, target / name)
        return str(target)

    def install(self, monkeypatch):
        fake = self

        class Api:
            def model_info(self, *args, **kwargs):
                return fake.model_info(*args, **kwargs)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        return self


def test_download_fetches_only_what_is_needed(hub, monkeypatch, tmp_path, tiny_template):
    template = Path(shutil.copytree(tiny_template, tmp_path / "both"))
    from safetensors.torch import save_file

    save_file(
        read_state_dict(template, "decoder"), template / "decoder" / "diffusion_pytorch_model.safetensors"
    )
    fake = FakeHub(hub, template).install(monkeypatch)
    was_disabled = are_progress_bars_disabled()
    folder = resolve_model("someone/music-spectrogram-diffusion", progress=False)
    assert fake.bars_disabled is True and are_progress_bars_disabled() == was_disabled
    assert missing_files(folder) == []
    assert sorted(fake.allow_patterns) == sorted(
        [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "melgan/model.onnx",
            "notes_encoder/config.json",
            "notes_encoder/diffusion_pytorch_model.bin",
            "continuous_encoder/config.json",
            "continuous_encoder/diffusion_pytorch_model.bin",
            "decoder/config.json",
            "decoder/diffusion_pytorch_model.safetensors",  # not the .bin when both are published
        ]
    )


def test_download_keeps_progress_bars_by_default(hub, monkeypatch, tiny_template):
    fake = FakeHub(hub, tiny_template).install(monkeypatch)
    if are_progress_bars_disabled():
        pytest.skip("progress bars are disabled in this environment (HF_HUB_DISABLE_PROGRESS_BARS)")
    resolve_model("someone/model")
    assert fake.bars_disabled is False


def test_a_repo_without_the_layout(hub, monkeypatch, tiny_template):
    FakeHub(hub, tiny_template, files=["model_index.json", "unet/config.json"]).install(monkeypatch)
    with pytest.raises(ModelLayoutError, match="not a Spectrogram Diffusion model") as e:
        resolve_model("someone/stable-diffusion")
    assert "melgan/model.onnx" in one_line(e.value)


def test_a_repo_without_a_vocoder_downloads_for_griffin_lim(hub, monkeypatch, tiny_template):
    files = [str(p.relative_to(tiny_template)) for p in tiny_template.rglob("*.*")]
    files.remove("melgan/model.onnx")
    fake = FakeHub(hub, tiny_template, files=files).install(monkeypatch)
    with pytest.raises(ModelLayoutError, match=r"has no vocoder \(melgan/model.onnx\); render it with "
                                               "--vocoder griffin-lim"):  # fmt: skip
        resolve_model("someone/from-scratch", progress=False)
    folder = resolve_model("someone/from-scratch", progress=False, vocoder=False)
    assert "melgan/model.onnx" not in fake.allow_patterns and missing_files(folder, vocoder=False) == []


def http_error(cls, status: int):
    response = requests.Response()
    response.status_code = status
    return cls(f"{status} error", response=response)


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (http_error(RepositoryNotFoundError, 404), ModelNotFoundError, "no hub repo of that name"),
        (http_error(GatedRepoError, 403), HubError, "is gated"),
        (http_error(RevisionNotFoundError, 404), ModelNotFoundError, "has no revision 'v9'"),
        (http_error(HfHubHTTPError, 503), HubError, "refused"),
        (requests.exceptions.ConnectTimeout("timed out"), HubError, "cannot reach the Hugging Face hub"),
    ],
    ids=["not-found", "gated", "revision", "server-error", "timeout"],
)
def test_hub_errors_become_one_line(hub, monkeypatch, tiny_template, error, kind, text):
    FakeHub(hub, tiny_template, error=error).install(monkeypatch)
    with pytest.raises(kind, match=text) as e:
        resolve_model("someone/model", revision="v9")
    assert isinstance(e.value, SpectrosynthError)
    assert "someone/model" in one_line(e.value)
