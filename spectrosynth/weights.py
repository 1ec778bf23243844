"""Locate, download, read and check the Spectrogram Diffusion weights.

A model is a folder in the layout published at https://huggingface.co/google/music-spectrogram-diffusion::

    model_index.json
    scheduler/scheduler_config.json
    notes_encoder/{config.json, diffusion_pytorch_model.safetensors or .bin}
    continuous_encoder/{config.json, diffusion_pytorch_model.safetensors or .bin}
    decoder/{config.json, diffusion_pytorch_model.safetensors or .bin}
    melgan/model.onnx                                   (not needed to render with --vocoder griffin-lim)

`resolve_model` accepts such a folder, or a hub repository id that it fetches into the standard Hugging Face
cache (HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE apply as for any Hugging Face library), or one of the names
in MODEL_NAMES: "base" (the published model) and "small" (the authors' small model, converted from their t5x
checkpoint into spectrosynth's cache by spectrosynth.small_model).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from spectrosynth.errors import HubError, ModelLayoutError, ModelNotFoundError, WeightsError

DEFAULT_MODEL = "google/music-spectrogram-diffusion"
#: Names `--model` takes besides a folder or a hub repo id (a folder of the same name in the current
#: directory wins; write ./small for it).
MODEL_NAMES = {
    "base": f"{DEFAULT_MODEL}, the authors' base_with_context (the default)",
    "small": "the authors' small_with_context, converted from their t5x checkpoint (small_model.py)",
}

#: The three torch components, in the order the pipeline runs them.
COMPONENTS = ("notes_encoder", "continuous_encoder", "decoder")

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
MELGAN = "melgan/model.onnx"
WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHOW = 3  # how many names of each kind a one-line message lists


# ----------------------------------------------------------------------------------------------------
# Layout


def missing_files(folder: str | os.PathLike[str], vocoder: bool = True) -> list[str]:
    """The parts of the published layout that `folder` lacks (empty when it is complete). vocoder=False:
    melgan/model.onnx is not required (for rendering with `--vocoder griffin-lim`)."""
    folder = Path(folder)
    missing = []
    for name in (MODEL_INDEX, SCHEDULER_CONFIG):
        if not (folder / name).is_file():
            missing.append(name)
    for component in COMPONENTS:
        if not (folder / component / "config.json").is_file():
            missing.append(f"{component}/config.json")
        if not weights_file(folder, component):
            missing.append(f"{component}/{WEIGHTS_SAFETENSORS} (or .bin)")
    if vocoder and not (folder / MELGAN).is_file():
        missing.append(MELGAN)
    return missing


def weights_file(folder: str | os.PathLike[str], component: str) -> Path | None:
    """The component's weights file: safetensors if present, else the pickled .bin; None if neither."""
    for name in (WEIGHTS_SAFETENSORS, WEIGHTS_BIN):
        path = Path(folder) / component / name
        if path.is_file():
            return path
    return None


def check_layout(folder: str | os.PathLike[str], vocoder: bool = True) -> None:
    """Raise ModelLayoutError naming what is missing when `folder` is not in the published layout
    (vocoder=False: without melgan/model.onnx)."""
    missing = missing_files(folder, vocoder)
    if missing == [MELGAN]:
        raise ModelLayoutError(
            f"model folder {folder} has no vocoder ({MELGAN}), as a model trained from scratch has none; "
            f"render with --vocoder griffin-lim (much lower quality), or copy {MELGAN} from {DEFAULT_MODEL} "
            "into it (`spectrosynth download` prints where that is)"
        )
    if missing:
        raise ModelLayoutError(
            f"model folder {folder} is incomplete: missing {', '.join(missing)}; "
            f"copy the complete layout of {DEFAULT_MODEL} there, or download it again"
        )


# ----------------------------------------------------------------------------------------------------
# Resolution: local folder or hub repository


def resolve_model(
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    revision: str | None = None,
    progress: bool = True,
    force: bool = False,
    vocoder: bool = True,
) -> Path:
    """The local folder holding the complete model `model` names.

    `model` is either a folder in the published layout (used as is), a hub repository id such as
    ``google/music-spectrogram-diffusion``, or a name of MODEL_NAMES ("base": that repository; "small": the
    authors' small model, downloaded and converted once, spectrosynth.small_model.resolve). A complete
    cached snapshot of the repository is used without contacting the hub; otherwise the configs, the
    weights (safetensors where the repository has them, else .bin) and the vocoder are downloaded into the
    Hugging Face cache, with its progress bars unless `progress` is False. `revision` (branch, tag or
    commit) applies to hub repositories only; `force` downloads a hub model (or the small model) again even
    when the cache holds a complete copy. vocoder=False: the model need not have melgan/model.onnx (it
    renders with `--vocoder griffin-lim`); a hub model's is still fetched if it has one.
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(
                f"{text} is a file, not a model folder; pass the folder that holds model_index.json, "
                f"or a hub repo id like {DEFAULT_MODEL}"
            )
        check_layout(path, vocoder)
        return path
    if isinstance(model, str) and text == "base":
        return _resolve_hub(DEFAULT_MODEL, revision, progress, force, vocoder)
    if isinstance(model, str) and text == "small":
        from spectrosynth import small_model

        return small_model.resolve(progress=progress, force=force, vocoder=vocoder)
    if isinstance(model, str) and _REPO_ID.match(text) and ".." not in text and "--" not in text:
        return _resolve_hub(text, revision, progress, force, vocoder)
    raise ModelNotFoundError(
        f"no such model folder: {text}; pass a folder in the published layout, a hub repo id like "
        f"{DEFAULT_MODEL}, or base or small"
    )


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning the hub could not be reached (requests for huggingface_hub<1, httpx after)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    try:
        import requests

        errors.append(requests.exceptions.RequestException)
    except ImportError:  # pragma: no cover - depends on the huggingface_hub version
        pass
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:  # pragma: no cover - depends on the huggingface_hub version
        pass
    return tuple(errors)


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder for this revision, without any network access; None if there is none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn huggingface_hub's progress bars off for the duration when `enabled` is False."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    switch = not enabled and not are_progress_bars_disabled()
    if switch:
        disable_progress_bars()
    try:
        yield
    finally:
        if switch:
            enable_progress_bars()


def _files_to_fetch(repo_files: list[str], vocoder: bool = True) -> list[str]:
    """The repository files the model needs: configs, one weights file per component, the vocoder (unless
    `vocoder` is False and the repository has none)."""
    present = set(repo_files)
    wanted = [MODEL_INDEX, SCHEDULER_CONFIG] + ([MELGAN] if vocoder or MELGAN in present else [])
    for component in COMPONENTS:
        wanted.append(f"{component}/config.json")
        safetensors = f"{component}/{WEIGHTS_SAFETENSORS}"
        wanted.append(safetensors if safetensors in present else f"{component}/{WEIGHTS_BIN}")
    return wanted


def _resolve_hub(
    repo_id: str, revision: str | None, progress: bool, force: bool = False, vocoder: bool = True
) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision}" if revision else ""
    try:
        cached = _cached_snapshot(repo_id, revision)
    except HFValidationError as e:
        raise ModelNotFoundError(
            f"no such model folder, and {repo_id} is not a valid hub repo id ({_one_line(e)})"
        ) from e
    if cached is not None and not missing_files(cached, vocoder) and not force:
        return cached

    if _hub_offline():
        if force:
            raise HubError(f"HF_HUB_OFFLINE is set, so {repo_id} cannot be downloaded again; unset it first")
        if cached is None:
            raise HubError(
                f"HF_HUB_OFFLINE is set and {repo_id}{at} is not in the Hugging Face cache "
                f"(HF_HUB_CACHE={_hub_cache()}); unset HF_HUB_OFFLINE and connect once, run `spectrosynth "
                "download` on a connected machine and copy the cache, or pass --model /path/to/folder"
            )
        raise HubError(
            f"HF_HUB_OFFLINE is set and the cached copy of {repo_id}{at} in {cached} is incomplete "
            f"(missing {', '.join(missing_files(cached, vocoder))}); unset HF_HUB_OFFLINE and connect once "
            "to finish the download, or pass --model /path/to/folder"
        )

    not_cached = (
        f"{repo_id}{at} is not in the cache (HF_HUB_CACHE={_hub_cache()})"
        if cached is None
        else f"the cached copy of {repo_id}{at} is incomplete"
    )
    connection_errors = _connection_errors()
    try:
        info = HfApi().model_info(repo_id, revision=revision)
        files = _files_to_fetch([s.rfilename for s in info.siblings or []], vocoder)
        absent = [f for f in files if f not in {s.rfilename for s in info.siblings or []}]
        if absent == [MELGAN]:
            raise ModelLayoutError(
                f"hub repo {repo_id}{at} has no vocoder ({MELGAN}); render it with --vocoder griffin-lim "
                f"(much lower quality), or copy {MELGAN} from {DEFAULT_MODEL} into a local copy of it"
            )
        if absent:
            raise ModelLayoutError(
                f"hub repo {repo_id}{at} is not a Spectrogram Diffusion model in the published layout "
                f"(it lacks {', '.join(absent)}); pass {DEFAULT_MODEL} or a folder in that layout"
            )
        with _progress_bars(progress):
            folder = Path(
                snapshot_download(repo_id, revision=revision, allow_patterns=files, force_download=force)
            )
    except LocalEntryNotFoundError as e:  # the connection dropped after the file listing
        raise HubError(
            f"lost the connection to the Hugging Face hub while downloading {repo_id}{at}; run the command "
            "again to resume, or pass --model /path/to/folder"
        ) from e
    except GatedRepoError as e:
        raise HubError(
            f"{repo_id} is gated on the Hugging Face hub; accept its terms at "
            f"https://huggingface.co/{repo_id} and log in with `huggingface-cli login` (or set HF_TOKEN)"
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"no model folder {repo_id} and no hub repo of that name (or it is private and no valid token "
            f"was given); check the name, log in with `huggingface-cli login` for a private repo, or pass a "
            f"folder in the published layout"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(
            f"hub repo {repo_id} has no revision {revision!r}; pass a branch, tag or commit that exists, "
            "or leave out the revision for main"
        ) from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise HubError(
            f"the Hugging Face hub refused {repo_id}{at} (HTTP {status}) and {not_cached}; try again later, "
            "or pass --model /path/to/folder"
        ) from e
    except connection_errors as e:
        raise HubError(
            f"cannot reach the Hugging Face hub and {not_cached}; connect once or run `spectrosynth "
            "download` on a connected machine, or pass --model /path/to/folder"
        ) from e
    except OSError as e:
        raise HubError(
            f"could not save {repo_id} into the Hugging Face cache {_hub_cache()} ({_one_line(e)}); "
            "free disk space or point HF_HOME at a writable folder"
        ) from e
    missing = missing_files(folder, vocoder)
    if missing:
        raise HubError(
            f"the download of {repo_id}{at} into {folder} is incomplete (missing {', '.join(missing)}); "
            "run the command again to resume it"
        )
    return folder


# ----------------------------------------------------------------------------------------------------
# Configs


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLayoutError(f"{path} does not exist; the model folder is incomplete, download it again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(
            f"{path} is not valid JSON ({e}); the file is damaged, download the model again"
        ) from e
    if not isinstance(data, dict):
        raise WeightsError(
            f"{path} does not hold a JSON object; the file is damaged, download the model again"
        )
    return data


def read_config(
    folder: str | os.PathLike[str], component: str, filename: str | None = None
) -> dict[str, Any]:
    """`component`/`filename` as a dict: by default config.json, or scheduler_config.json for "scheduler"."""
    if filename is None:
        filename = "scheduler_config.json" if component == "scheduler" else "config.json"
    return _read_json(Path(folder) / component / filename)


def read_model_index(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """model_index.json as a dict."""
    return _read_json(Path(folder) / MODEL_INDEX)


# ----------------------------------------------------------------------------------------------------
# State dicts


def _not_a_checkpoint(path: Path, reason: str) -> WeightsError:
    return WeightsError(
        f"{path} is not a valid weights file ({reason}); it is damaged or incomplete, delete it and "
        "download the model again"
    )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def read_state_dict(folder: str | os.PathLike[str], component: str) -> dict[str, torch.Tensor]:
    """The component's tensors on the CPU, from diffusion_pytorch_model.safetensors if present, else .bin.

    The pickled .bin is read with ``weights_only=True`` (no code runs) and memory-mapped when it is in
    torch's zip format, so the 955 MB decoder is not held in memory twice.
    """
    path = weights_file(folder, component)
    if path is None:
        raise ModelLayoutError(
            f"{Path(folder) / component} has no {WEIGHTS_SAFETENSORS} or {WEIGHTS_BIN}; "
            "the model folder is incomplete, download it again"
        )
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise WeightsError(
            f"{path} is a Git LFS pointer, not the weights; fetch the real file (git lfs pull) or download "
            "the model again"
        )
    try:
        if path.name == WEIGHTS_SAFETENSORS:
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except MemoryError:
        raise
    except Exception as e:  # torch.load and safetensors raise many types for a damaged file
        raise _not_a_checkpoint(path, _one_line(e)) from e
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _not_a_checkpoint(path, "it does not hold a flat state_dict of named tensors")
    return dict(state)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f", +{len(names) - _SHOW} more" if len(names) > _SHOW else "")


def check_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], component: str
) -> None:
    """Raise WeightsError unless `state` has exactly the `expected` keys, each with the expected shape."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {_shape(tuple(state[k].shape))} not {_shape(tuple(expected[k]))}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape ({_listing(wrong)})")
    raise WeightsError(
        f"{component} weights do not fit its config.json: {'; '.join(problems)}; the weights and config come "
        "from different models, download the model again"
    )


# ----------------------------------------------------------------------------------------------------
# The published state_dict layout


def _need(config: Mapping[str, Any], component: str, *names: str) -> list[Any]:
    absent = [n for n in names if n not in config]
    if absent:
        raise WeightsError(
            f"{component}/config.json lacks {', '.join(absent)}; the file is damaged, "
            "download the model again"
        )
    return [config[n] for n in names]


def _t5_encoder_layers(config: Mapping[str, Any], component: str) -> dict[str, tuple[int, ...]]:
    d_model, num_layers, num_heads, d_kv, d_ff, ff_proj = _need(
        config, component, "d_model", "num_layers", "num_heads", "d_kv", "d_ff", "feed_forward_proj"
    )
    inner = num_heads * d_kv
    wi = ("wi_0", "wi_1") if str(ff_proj).startswith("gated-") else ("wi",)
    keys: dict[str, tuple[int, ...]] = {}
    for i in range(num_layers):
        p = f"encoders.{i}.layer"
        for name in ("q", "k", "v"):
            keys[f"{p}.0.SelfAttention.{name}.weight"] = (inner, d_model)
        keys[f"{p}.0.SelfAttention.o.weight"] = (d_model, inner)
        keys[f"{p}.0.layer_norm.weight"] = (d_model,)
        for name in wi:
            keys[f"{p}.1.DenseReluDense.{name}.weight"] = (d_ff, d_model)
        keys[f"{p}.1.DenseReluDense.wo.weight"] = (d_model, d_ff)
        keys[f"{p}.1.layer_norm.weight"] = (d_model,)
    keys["layer_norm.weight"] = (d_model,)
    return keys


def published_keys(component: str, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of `component` in the published checkpoint, with its torch shape, in module order.

    Shapes follow torch's Linear convention [out, in]. `config` is the component's config.json.
    """
    if component == "notes_encoder":
        max_length, vocab_size, d_model = _need(config, component, "max_length", "vocab_size", "d_model")
        head = {
            "token_embedder.weight": (vocab_size, d_model),
            "position_encoding.weight": (max_length, d_model),
        }
        return head | _t5_encoder_layers(config, component)
    if component == "continuous_encoder":
        input_dims, context, d_model = _need(
            config, component, "input_dims", "targets_context_length", "d_model"
        )
        head = {"input_proj.weight": (d_model, input_dims), "position_encoding.weight": (context, d_model)}
        return head | _t5_encoder_layers(config, component)
    if component == "decoder":
        input_dims, targets_length, d_model, num_layers, num_heads, d_kv, d_ff = _need(
            config,
            component,
            "input_dims",
            "targets_length",
            "d_model",
            "num_layers",
            "num_heads",
            "d_kv",
            "d_ff",
        )
        inner, cond = num_heads * d_kv, 4 * d_model
        keys: dict[str, tuple[int, ...]] = {
            "conditioning_emb.0.weight": (cond, d_model),
            "conditioning_emb.2.weight": (cond, cond),
            "position_encoding.weight": (targets_length, d_model),
            "continuous_inputs_projection.weight": (d_model, input_dims),
        }
        for i in range(num_layers):
            p = f"decoders.{i}.layer"
            keys[f"{p}.0.layer_norm.weight"] = (d_model,)
            keys[f"{p}.0.FiLMLayer.scale_bias.weight"] = (2 * d_model, cond)
            for j in (0, 1):
                for name in ("to_q", "to_k", "to_v"):
                    keys[f"{p}.{j}.attention.{name}.weight"] = (inner, d_model)
                keys[f"{p}.{j}.attention.to_out.0.weight"] = (d_model, inner)
                if j == 1:
                    keys[f"{p}.1.layer_norm.weight"] = (d_model,)
            for name in ("wi_0", "wi_1"):
                keys[f"{p}.2.DenseReluDense.{name}.weight"] = (d_ff, d_model)
            keys[f"{p}.2.DenseReluDense.wo.weight"] = (d_model, d_ff)
            keys[f"{p}.2.film.scale_bias.weight"] = (2 * d_model, cond)
            keys[f"{p}.2.layer_norm.weight"] = (d_model,)
        keys["decoder_norm.weight"] = (d_model,)
        keys["spec_out.weight"] = (input_dims, d_model)
        return keys
    raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")


def parameter_count(component: str, config: Mapping[str, Any]) -> int:
    """How many parameters the component has, computed from its config alone."""
    total = 0
    for shape in published_keys(component, config).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def read_checked_state_dict(
    folder: str | os.PathLike[str], component: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A component's config and its weights, every published key and shape checked against the config."""
    config = read_config(folder, component)
    state = read_state_dict(folder, component)
    check_state_dict(state, published_keys(component, config), component)
    return config, state


def verify_model(folder: str | os.PathLike[str], vocoder: bool = True) -> int:
    """Check a model folder fully: layout, configs, every weight's key and shape, the vocoder (vocoder=False:
    without one, for a model that has none).

    Returns the size in bytes of the weights and vocoder. Raises a SpectrosynthError subclass naming the
    first problem found. Weights are memory-mapped, so this reads little of them.
    """
    folder = Path(folder)
    check_layout(folder, vocoder)
    total = 0
    for component in COMPONENTS:
        read_checked_state_dict(folder, component)
        total += weights_file(folder, component).stat().st_size
    read_config(folder, "scheduler")
    read_model_index(folder)
    if not vocoder:
        return total
    from spectrosynth.vocoder import Vocoder

    Vocoder(folder / MELGAN)
    return total + (folder / MELGAN).stat().st_size
