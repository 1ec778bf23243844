"""Whole training runs: fine-tuning into the published layout, resuming after Ctrl-C or SIGKILL, torchrun,
logs, and the errors a run can meet."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import ids_in_splits, write_pair

from spectrosynth import models, weights
from spectrosynth.constants import MIN_LOG_MEL
from spectrosynth.data import DatasetSettings, build_dataset
from spectrosynth.data.store import shard_files
from spectrosynth.errors import SpectrosynthError
from spectrosynth.presets import configs_for
from spectrosynth.training import TrainOptions, resumed_options, train
from spectrosynth.training.checkpoint import CheckpointError, complete, latest
from spectrosynth.training.model import new_networks

pytestmark = pytest.mark.slow
HOLDOUT = 0.34
# float32: --precision auto takes bfloat16 on CPUs that are fast at it, whose rounding differs with the shapes
TINY = [
    "--config",
    "tiny",
    "--batch-size",
    "4",
    "--log-every",
    "1",
    "--val-examples",
    "2",
    "--precision",
    "float32",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-runs")
    for name, seconds in zip(ids_in_splits(HOLDOUT, train=2, validation=1), (5.0, 11.0, 8.0), strict=True):
        write_pair(root / "pairs", name, seconds=seconds)
    build_dataset(root / "pairs", root / "data", DatasetSettings(holdout=HOLDOUT))
    return root / "data"


def spectrosynth(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spectrosynth", *args], capture_output=True, text=True, env=env, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr[-2000:]}")
    return result


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "spectrosynth", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(out: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = latest(out)
        if last is not None and last.step >= step:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no checkpoint in time")


def trained(out: Path) -> dict[str, torch.Tensor]:
    return load_file(latest(out).path / "weights.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning the published layout


def _reference_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import T5FilmDecoder
        from diffusers.pipelines.deprecated.spectrogram_diffusion import (
            SpectrogramContEncoder,
            SpectrogramNotesEncoder,
        )
    return {
        "notes_encoder": SpectrogramNotesEncoder,
        "continuous_encoder": SpectrogramContEncoder,
        "decoder": T5FilmDecoder,
    }


@pytest.mark.reference
@pytest.mark.parametrize("mode", ["full", "decoder", "lora"])
def test_fine_tuning_writes_a_model_diffusers_loads_strictly(dataset, tiny_model, tmp_path, mode):
    out = tmp_path / "run"
    result = spectrosynth(
        "train",
        str(dataset),
        str(out),
        "--init",
        str(tiny_model),
        "--mode",
        mode,
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--val-every",
        "0",
    )
    final = out / "final"
    assert f"the model is in {final}" in result.stderr
    assert (final / "melgan" / "model.onnx").read_bytes() == (
        tiny_model / "melgan" / "model.onnx"
    ).read_bytes()
    assert json.loads((final / "model_index.json").read_text()) == json.loads(
        (tiny_model / "model_index.json").read_text()
    )
    reference = _reference_classes()
    changed = {}
    for component, cls in reference.items():
        before = weights.read_state_dict(tiny_model, component)
        after = weights.read_state_dict(final, component)
        assert after.keys() == before.keys()
        assert torch.equal(after["position_encoding.weight"], before["position_encoding.weight"])  # frozen
        changed[component] = {k for k in before if not torch.equal(before[k], after[k])}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref, info = cls.from_pretrained(final, subfolder=component, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        ours = models.build(component, weights.read_config(final, component), after)
        _same_outputs(component, ref.eval(), ours)
    assert changed["decoder"]
    if mode == "full":
        assert changed["notes_encoder"] and changed["continuous_encoder"]
    else:  # frozen encoders
        assert not changed["notes_encoder"] and not changed["continuous_encoder"]
    if mode == "lora":  # the adapters on attention, merged: nothing else moved
        assert changed["decoder"] <= {k for k in changed["decoder"] if ".attention.to_" in k}
    if mode == "lora":
        render = spectrosynth(
            "render",
            "tests/data/midi/nottingham/waltzes1.mid",
            str(tmp_path / "w.wav"),
            "--model",
            str(final),
            "--duration",
            "3",
            "--steps",
            "2",
            "-q",
        )
        assert render.returncode == 0 and (tmp_path / "w.wav").stat().st_size > 1000


@torch.no_grad()
def _same_outputs(component, ref, ours) -> None:
    g = torch.Generator().manual_seed(0)
    if component == "notes_encoder":
        tokens = torch.zeros(1, 2048, dtype=torch.long)
        tokens[0, :50] = torch.randint(3, 1391, (50,), generator=g)
        expected, _ = ref(tokens, tokens > 0)
        torch.testing.assert_close(ours(tokens[:, :50]), expected[:, :50], rtol=0, atol=1e-5)
    elif component == "continuous_encoder":
        features = torch.rand(1, 256, 128, generator=g) * 2 - 1
        expected, _ = ref(features, torch.ones(1, 256, dtype=torch.bool))
        torch.testing.assert_close(ours(features), expected, rtol=0, atol=1e-5)
    else:
        d = ours.config.d_model
        notes = torch.randn(1, 2048, d, generator=g)
        mask = torch.zeros(1, 2048, dtype=torch.bool)
        mask[0, :40] = True
        context = torch.randn(1, 256, d, generator=g)
        x, t = torch.randn(1, 256, 128, generator=g), torch.tensor([0.4])
        expected = ref([(notes, mask), (context, torch.ones(1, 256, dtype=torch.bool))], x, t)
        kvs = ours.cross_keys_values(torch.cat([notes[:, :40], context], 1))
        torch.testing.assert_close(ours(x, ours.conditioning(t), kvs), expected, rtol=0, atol=1e-5)


def test_an_init_model_of_another_size_is_refused(dataset, tiny_model, tmp_path):
    result = spectrosynth(
        "train",
        str(dataset),
        str(tmp_path / "run"),
        "--init",
        str(tiny_model),
        "--config",
        "small",
        check=False,
    )
    assert result.returncode == 1
    assert "does not match --config: its notes_encoder has d_model 32 not 512" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_model_trained_here_without_a_vocoder_can_be_fine_tuned(dataset, tiny_model, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    (bare / "melgan" / "model.onnx").unlink()
    out = tmp_path / "run"
    spectrosynth("train", str(dataset), str(out), "--init", str(bare), "--max-steps", "1", "--val-every", "0")
    assert (out / "final" / "decoder" / "config.json").is_file()
    assert not (out / "final" / "melgan" / "model.onnx").exists()  # none to copy: it renders with griffin-lim


# ---------------------------------------------------------------------------------------------------------
# Stopping and resuming


def test_sigkill_then_resume_ends_with_the_uninterrupted_parameters(dataset, tmp_path):
    common = [*TINY, "--max-steps", "8", "--checkpoint-every", "2", "--val-every", "3"]  # dropout on (0.1)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    spectrosynth("train", str(dataset), str(whole), *common)
    process = start("train", str(dataset), str(broken), *common)
    wait_for_checkpoint(broken, 4, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = latest(broken).step
    assert killed_at < 8
    spectrosynth("train", str(dataset), str(broken), "--resume")
    assert latest(broken).step == 8
    assert_same(trained(whole), trained(broken))
    # the weight average too (kept by default; final/ holds it), and its count of updates
    assert_same(*(load_file(latest(run).path / "ema.safetensors") for run in (whole, broken)))
    assert [
        json.loads((latest(run).path / "state.json").read_text())["ema_updates"] for run in (whole, broken)
    ] == [8, 8]
    for component in ("notes_encoder", "continuous_encoder", "decoder"):
        assert_same(
            weights.read_state_dict(whole / "final", component),
            weights.read_state_dict(broken / "final", component),
        )
    steps = [int(r["step"]) for r in csv.DictReader((broken / "metrics.csv").open()) if r["loss"]]
    assert steps == list(range(1, 9))  # rows after the checkpoint were dropped, not repeated
    assert len(complete(broken)) <= 3  # --keep-checkpoints


def test_ctrl_c_checkpoints_stops_and_resume_goes_on(dataset, tmp_path):
    out = tmp_path / "run"
    process = start(
        "train",
        str(dataset),
        str(out),
        *TINY,
        "--max-steps",
        "500",
        "--checkpoint-every",
        "2",
        "--val-every",
        "0",
    )
    wait_for_checkpoint(out, 2, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    stopped = latest(out).step
    assert (
        f"stopped at step {stopped} after writing a checkpoint; run the same command with --resume" in stderr
    )
    assert (out / "final" / "decoder" / "config.json").exists()  # the model so far is usable
    result = spectrosynth("train", str(dataset), str(out), "--resume", "--max-steps", str(stopped + 3))
    assert latest(out).step == stopped + 3 and "trained" in result.stderr


def test_resume_refuses_changes_that_alter_the_run(dataset, tmp_path):
    out = tmp_path / "run"
    train(TrainOptions(str(dataset), str(out), config="tiny", max_steps=1, batch_size=4, val_every=0))
    with pytest.raises(
        SpectrosynthError, match=r"--resume continues the run as it was started \(--lr None\)"
    ):
        resumed_options(out, lr=0.5)
    options = resumed_options(out, max_steps=2, data_dir=str(dataset))
    assert options.max_steps == 2 and options.config == "tiny"
    with pytest.raises(SpectrosynthError, match="already holds a training run; add --resume"):
        train(TrainOptions(str(dataset), str(out), config="tiny", max_steps=1, batch_size=4))
    with pytest.raises(SpectrosynthError, match="holds no training run"):
        resumed_options(tmp_path / "elsewhere")


def test_a_full_disk_leaves_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    import spectrosynth.training.checkpoint as checkpoint

    out = tmp_path / "run"
    real = checkpoint.torch.save
    calls = []

    def full_disk(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"step 4 .*No space left on device.*step-00000002, is intact"):
        train(
            TrainOptions(
                str(dataset),
                str(out),
                config="tiny",
                max_steps=6,
                batch_size=4,
                val_every=0,
                checkpoint_every=2,
            )
        )
    assert [c.step for c in complete(out)] == [2]
    assert not list((out / "checkpoints").glob(".*"))  # no partial checkpoint left
    monkeypatch.setattr(checkpoint.torch, "save", real)
    train(resumed_options(out), resume=True)
    assert latest(out).step == 6


def test_a_damaged_shard_stops_a_run_with_one_line(dataset, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    (shard,) = shard_files(copy)
    shard.write_bytes(b"PAR1 not a parquet file")
    result = spectrosynth("train", str(copy), str(tmp_path / "run"), *TINY, "--max-steps", "1", check=False)
    assert result.returncode == 1
    assert f"dataset shard {shard} is damaged" in result.stderr and result.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------
# Several processes


def test_two_torchrun_processes_equal_one_with_the_same_global_batch(dataset, tmp_path):
    # AdamW, not Adafactor: Adafactor's first step moves each vector element by lr * sign(gradient), so a
    # gradient of ~0 that rounds to another sign on another split of the batch moves it the other way.
    common = [*TINY, "--max-steps", "3", "--dropout", "0", "--val-every", "0", "--checkpoint-every", "3",
              "--optimizer", "adamw", "--lr", "1e-3"]  # fmt: skip
    one, accum, two = tmp_path / "one", tmp_path / "accum", tmp_path / "two"
    spectrosynth("train", str(dataset), str(one), *common)
    spectrosynth("train", str(dataset), str(accum), *common, "--grad-accum", "2")
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "spectrosynth",
            "train",
            str(dataset),
            str(two),
            *common,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = trained(one)
    assert_same(trained(accum), expected, atol=1e-5)
    assert_same(trained(two), expected, atol=1e-5)
    # the optimiser is blind to the gradient's scale; the logged gradient norm is not
    norms = {
        run.name: [float(r["grad_norm"]) for r in csv.DictReader((run / "metrics.csv").open()) if r["loss"]]
        for run in (one, accum, two)
    }
    np.testing.assert_allclose(norms["two"], norms["one"], rtol=1e-4)
    np.testing.assert_allclose(norms["accum"], norms["one"], rtol=1e-4)
    fresh = new_networks(configs_for(32, 2, 2, 24, 64, dropout_rate=0.0), seed=0)["decoder"].state_dict()
    assert not torch.equal(fresh["output_proj.weight"], expected["decoder.output_proj.weight"])  # it trained
    assert result.stderr.count("scratch training on") == 1  # rank 0 alone reports


# ---------------------------------------------------------------------------------------------------------
# Logs and precision


def test_the_log_the_plot_and_tensorboard(dataset, tmp_path):
    out = tmp_path / "run"
    train(
        TrainOptions(
            str(dataset),
            str(out),
            config="tiny",
            max_steps=4,
            batch_size=4,
            val_every=2,
            val_examples=2,
            log_every=1,
        )
    )
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert json.loads((out / "run.json").read_text())["precision"] in (
        "float32",
        "bfloat16",
    )  # auto, resolved
    assert [r["step"] for r in rows if r["loss"]] == ["1", "2", "3", "4"]
    assert [r["step"] for r in rows if r["val_loss"]] == ["0", "2", "4"]
    assert all(float(r["examples_per_second"]) > 0 for r in rows if r["loss"])
    png = (out / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_bfloat16_autocast_trains_close_to_float32(dataset, tmp_path):
    losses = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        train(
            TrainOptions(
                str(dataset),
                str(out),
                config="tiny",
                max_steps=1,
                batch_size=8,
                val_every=0,
                precision=precision,
                dropout=0.0,
            )
        )
        (row,) = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["loss"]]
        losses[precision] = float(row["loss"])
    assert np.isfinite(losses["bfloat16"])
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.01)


# ---------------------------------------------------------------------------------------------------------
# Overfitting one segment


def test_a_model_overfits_one_segment_and_renders_closer_to_it(tmp_path):
    from spectrosynth.data import DatasetReader
    from spectrosynth.testing import write_vocoder
    from spectrosynth.training.model import save_published

    pairs, data = tmp_path / "pairs", tmp_path / "data"
    midi, _ = write_pair(pairs, "one", seconds=2.0, tail=0.5)
    build_dataset(pairs, data)
    # d_model above the 128 mel bins: the decoder passes its noisy input through to the output beside the
    # position table (at d_model <= 128 the loss stalls near 0.2 of 1.1); one layer keeps the test short.
    size = tmp_path / "size.json"
    size.write_text(json.dumps(OVERFIT_SIZE))
    vocoder = write_vocoder(tmp_path / "vocoder.onnx")
    out = tmp_path / "run"
    spectrosynth(
        "train",
        str(data),
        str(out),
        "--config",
        str(size),
        "--optimizer",
        "adamw",
        "--lr",
        "2e-3",
        "--warmup",
        "50",
        "--lr-schedule",
        "cosine",
        "--max-steps",
        OVERFIT_STEPS,
        "--batch-size",
        "8",
        "--dropout",
        "0",
        "--cfg-dropout",
        "0",
        "--precision",
        "float32",
        "--start-rate",
        "1",
        "--val-every",
        "0",
        "--log-every",
        "1",
        "--vocoder",
        str(vocoder),
    )
    losses = [float(r["loss"]) for r in csv.DictReader((out / "metrics.csv").open()) if r["loss"]]
    assert np.mean(losses[-20:]) < losses[0] / 10, (losses[0], np.mean(losses[-20:]))
    untrained = tmp_path / "untrained"
    configs = configs_for(**OVERFIT_SIZE, dropout_rate=0.0)
    save_published(untrained, new_networks(configs, seed=0), configs, vocoder)
    reader = DatasetReader(data)
    mel = reader.load(reader.songs[0]).mel
    target = np.full((256, 128), MIN_LOG_MEL, np.float32)  # the segment, silent after the song (as trained)
    target[: len(mel)] = mel[:256]
    distance = {}
    for name, model in (("trained", out / "final"), ("untrained", untrained)):
        mel = tmp_path / f"{name}.npy"
        spectrosynth(
            "render",
            str(midi),
            str(tmp_path / f"{name}.wav"),
            "--model",
            str(model),
            "--guidance",
            "1",
            "--mel-out",
            str(mel),
            "--no-trim",
            "-q",
        )
        distance[name] = float(np.abs(np.load(mel)[:256] - target).mean())
    print(f"overfit: loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.4f}; mel L1 {distance}")
    assert distance["trained"] < distance["untrained"] / 2, distance


OVERFIT_STEPS = "800"
OVERFIT_SIZE = {"d_model": 256, "num_layers": 1, "num_heads": 2, "d_kv": 64, "d_ff": 256}
