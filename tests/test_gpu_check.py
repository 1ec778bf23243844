"""bench/gpu_check.sh as it runs on a machine without a GPU: the current environment reused (nothing is
installed), the cuda tests skipped, the benchmarks quick on the CPU, everything in one results folder."""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="needs bash and coreutils' timeout",
)


def run_check(results: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env["GPU_CHECK_RESULTS"] = str(results)
    return subprocess.run(
        ["bash", str(SCRIPT), "--no-gpu", "--reuse-env", sys.prefix, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def steps(summary: str) -> dict[str, tuple[str, str]]:
    """summary.md's table: step -> (status, notes)."""
    table = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("step", "---"):
            table[cells[0]] = (cells[1], cells[3])
    return table


@pytest.mark.slow
def test_without_a_gpu_every_step_runs_and_reports_into_one_folder(tmp_path):
    results = tmp_path / "results"
    out = run_check(results)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no NVIDIA GPU here" in out.stdout
    summary = (results / "summary.md").read_text()
    table = steps(summary)
    assert list(table) == ["gpu", "install", "doctor", "cuda-tests", "checkpoint", "speed", "batch", "e2e"]
    assert table["gpu"][0] == "skipped" and table["install"] == ("skipped", f"reusing {sys.prefix}")
    assert all(status == "ok" for name, (status, _) in table.items() if name not in ("gpu", "install"))
    assert "## Figures" in summary

    doctor = json.loads((results / "doctor.json").read_text())
    assert doctor["schema"] == "spectrosynth.doctor/1" and doctor["torch"]["version"] == torch.__version__

    suite = ET.parse(results / "pytest-cuda.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    assert tests > 0 and int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    if not torch.cuda.is_available():
        assert skipped == tests, "the cuda tests must skip without a CUDA device"
        assert f"0 passed, 0 failed, {tests} skipped" in table["cuda-tests"][1]
        assert "no CUDA device" in (results / "pytest-cuda.log").read_text()

    for name in ("speed", "batch", "e2e"):
        report = json.loads((results / f"{name}.json").read_text())
        assert report["machine"]["device"] == "cpu" and report["rows"], name
        assert (results / f"{name}.csv").read_text().count("\n") == len(report["rows"]) + 1
    assert not list(results.glob("*.wav"))


def test_a_failing_step_is_recorded_the_rest_still_run_and_the_exit_code_says_so(tmp_path):
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    env["GPU_CHECK_RESULTS"] = str(results)
    out = subprocess.run(
        ["bash", str(SCRIPT), "--no-gpu", "--reuse-env", str(tmp_path / "no-such-env")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    table = steps((results / "summary.md").read_text())
    assert table["doctor"][0] == "failed" and "exit code 127" in table["doctor"][1]
    assert table["cuda-tests"][0] == "failed" and table["checkpoint"][0] == "failed"
    for name in ("speed", "batch", "e2e"):
        assert table[name][0] == "failed" and table[name][1].startswith("not run: no checkpoint"), name
    assert "some steps failed" in (results / "summary.md").read_text()


def test_help_and_a_wrong_option():
    help_text = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert help_text.returncode == 0 and "--reuse-env" in help_text.stdout
    wrong = subprocess.run(["bash", str(SCRIPT), "--colour"], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and "unknown option --colour" in wrong.stderr
