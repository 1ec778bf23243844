"""bench/gpu_measure.sh as it runs without a GPU, on a tiny run: it trains on for its budget, sweeps the new
checkpoint, and cuts it into pieces that --unpack puts back exactly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import ids_in_splits, write_pair

from spectrosynth.data import DatasetSettings, build_dataset
from spectrosynth.training.checkpoint import latest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_measure.sh"
HOLDOUT = 0.34

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("bash") is None or shutil.which("timeout") is None or shutil.which("split") is None,
        reason="needs bash and coreutils",
    ),
]


def script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_MEASURE_")}
    env["PYTHON"] = sys.executable
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=400)


def test_it_trains_on_sweeps_and_its_pieces_unpack_to_the_checkpoint(tmp_path):
    pairs, data, run = tmp_path / "pairs", tmp_path / "data", tmp_path / "run"
    for name, seconds in zip(ids_in_splits(HOLDOUT, train=1, validation=1), (6.0, 6.0), strict=True):
        write_pair(pairs, name, seconds=seconds)
    build_dataset(pairs, data, DatasetSettings(holdout=HOLDOUT))
    subprocess.run(
        [sys.executable, "-m", "spectrosynth", "train", str(data), str(run), "--config", "tiny",
         "--batch-size", "2", "--max-steps", "2", "--checkpoint-every", "50", "--val-every", "0",
         "--precision", "float32", "--quiet"],
        check=True,
    )  # fmt: skip
    results = tmp_path / "results"
    out = script("--run", str(run), "--data", str(data), "--midi", str(pairs), "--songs", "1", "--segments",
                 "1", "--budget", "220", "--reserve", "170", "--results", str(results))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    summary = (results / "summary.md").read_text()
    assert "- train: exit 130" in summary or "- train: exit 124" in summary  # stopped by its deadline
    assert "- sweep: exit 0" in summary
    last = latest(run)
    assert last.step > 2  # it trained on
    assert f"- steps: from 2 to {last.step}" in summary
    sweep = json.loads((results / "quality_trend.json").read_text())
    (model,) = sweep["models"].values()
    assert model["step"] == last.step and set(model["results"]) == {"train", "heldout"}
    assert [r["name"] for r in model["results"]["train"]][0].startswith("authors")
    pieces = sorted(results.glob("checkpoint.tar.part-*"))
    assert pieces and all(p.stat().st_size <= 16 * 2**20 for p in pieces)

    again = tmp_path / "again"
    unpacked = script("--unpack", str(results), "--run", str(again))
    assert unpacked.returncode == 0, unpacked.stderr
    for name in ("weights.safetensors", "ema.safetensors", "optimizer.pt", "state.json"):
        assert (latest(again).path / name).read_bytes() == (last.path / name).read_bytes()
    assert (again / "run.json").read_bytes() == (run / "run.json").read_bytes()

    pieces[0].write_bytes(pieces[0].read_bytes()[:-1] + b"x")  # a damaged piece is refused
    broken = script("--unpack", str(results), "--run", str(tmp_path / "broken"))
    assert broken.returncode == 1 and "do not make the checkpoint" in broken.stderr
    assert not (tmp_path / "broken").exists()
