"""Training checkpoints: everything a run needs to go on exactly where it was.

    OUT_DIR/checkpoints/step-00001000/
      weights.safetensors   the trained tensors (every trainable parameter, and the position tables)
      ema.safetensors       the exponential moving average of the trainable parameters (training/ema.py)
      optimizer.pt          optimizer and learning-rate schedule state (torch.save; read weights_only)
      state.json            the step, the loss, the wall time so far, the next step's learning rate, the
                            number of EMA updates

A checkpoint is written into a hidden temporary folder and renamed when complete, so a crash, SIGKILL or a
full disk never leaves a half-written `step-*` folder; older checkpoints beyond `keep` are deleted only
after a newer one is complete. Nothing else is needed to resume: every example and every dropout mask is a
function of the seed and the step (spectrosynth.training.examples), not of a random state carried along.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spectrosynth.errors import SpectrosynthError

CHECKPOINTS = "checkpoints"
_WEIGHTS, _EMA, _OPTIMIZER, _STATE = "weights.safetensors", "ema.safetensors", "optimizer.pt", "state.json"


class CheckpointError(SpectrosynthError):
    """A checkpoint that cannot be written or read."""


@dataclass
class Checkpoint:
    step: int
    path: Path
    state: dict[str, Any]


def saved_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the trained module: trainable parameters and the position tables."""
    return {
        name: p.detach().to("cpu").contiguous()
        for name, p in module.named_parameters()
        if p.requires_grad or name.endswith("position_embedding.weight")
    }


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """A folder written under a hidden temporary name beside `final` (`.NAME.tmp`), its files synced, and
    renamed onto `final` when the block succeeds (replacing an existing one). On any error, Ctrl-C included,
    the temporary is removed and `final` is left as it was."""
    part = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        yield part
        for path in part.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            part.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            part.rename(final)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise


def save(
    out_dir: Path,
    step: int,
    module: torch.nn.Module,
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int,
    average: tuple[dict[str, torch.Tensor], int] | None = None,
    keep_also: Callable[[int], bool] | None = None,
) -> Path:
    """Write step `step`'s checkpoint atomically, with the weight average (its tensors and its number of
    updates) when there is one; then delete all but the newest `keep`, and those `keep_also` names."""
    from safetensors.torch import save_file

    folder = out_dir / CHECKPOINTS
    final = folder / f"step-{step:08d}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_folder(final) as part:
            save_file(saved_tensors(module), part / _WEIGHTS)
            if average is not None:
                save_file(average[0], part / _EMA)
                state = {**state, "ema_updates": average[1]}
            torch.save(optimizer_state, part / _OPTIMIZER)
            (part / _STATE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        last = latest(out_dir)
        kept = f"the last good checkpoint, {last.path.name}, is intact" if last else "no checkpoint was kept"
        raise CheckpointError(
            f"could not write the checkpoint of step {step} in {folder} ({e.strerror or e}); {kept}; free "
            "disk space and run again with --resume"
        ) from e
    for old in complete(out_dir)[:-keep] if keep > 0 else []:
        if keep_also is None or not keep_also(old.step):
            shutil.rmtree(old.path, ignore_errors=True)
    return final


def complete(out_dir: Path) -> list[Checkpoint]:
    """The complete checkpoints of a run, oldest first."""
    found = []
    for path in sorted((out_dir / CHECKPOINTS).glob("step-*")):
        if not (path / _STATE).is_file():
            continue
        try:
            step = int(path.name.removeprefix("step-"))
        except ValueError:
            continue
        found.append(Checkpoint(step, path, {}))
    return found


def latest(out_dir: Path) -> Checkpoint | None:
    checkpoints = complete(out_dir)
    return checkpoints[-1] if checkpoints else None


def remove_temporaries(out_dir: Path) -> None:
    for part in (out_dir / CHECKPOINTS).glob(".step-*.tmp"):
        shutil.rmtree(part, ignore_errors=True)


def load_ema(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], int] | None:
    """A checkpoint's weight average and its number of updates, or None when it has none (a run without
    EMA, or one written before spectrosynth kept it)."""
    from safetensors.torch import load_file

    path = checkpoint.path / _EMA
    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
        updates = int(json.loads((checkpoint.path / _STATE).read_text(encoding="utf-8"))["ema_updates"])
    except Exception as e:  # noqa: BLE001 - safetensors and json raise many types
        raise CheckpointError(
            f"checkpoint {checkpoint.path} has a damaged weight average ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:120]}); delete the checkpoint to resume from the one before"
        ) from e
    return tensors, updates


def load(checkpoint: Checkpoint, module: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Put a checkpoint's tensors into `module` (every trainable parameter must be there); returns the
    optimizer state and the state.json."""
    from safetensors.torch import load_file

    path = checkpoint.path
    try:
        tensors = load_file(path / _WEIGHTS)
        optimizer_state = torch.load(path / _OPTIMIZER, map_location="cpu", weights_only=True)
        state = json.loads((path / _STATE).read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - safetensors, torch and json raise many types
        raise CheckpointError(
            f"checkpoint {path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:120]}); delete "
            "it to resume from the one before"
        ) from e
    expected = saved_tensors(module)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's model ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(wrong)} of another shape, e.g. {(missing + unexpected + wrong)[:1]}); was "
            "it written by another run?"
        )
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return optimizer_state, state
