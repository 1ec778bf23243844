"""`--dtype auto` on a CPU is decided once per machine (spectrosynth.precision): measured the first time, kept
in the cache folder for this CPU and torch, read (not measured) by later processes; overridden by
SPECTROSYNTH_CPU_DTYPE; never in the way of a render when the cache cannot be written."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from spectrosynth import precision
from spectrosynth.cli import app
from spectrosynth.errors import SpectrosynthError
from spectrosynth.pipeline import resolve_precision

CPU = torch.device("cpu")


class Probe:
    """measure_bfloat16_speedup's stand-in: a fixed speedup, and how often it was asked."""

    def __init__(self, speedup: float):
        self.speedup, self.calls = speedup, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return {"speedup": self.speedup, "float32_s": 0.02, "bfloat16_s": 0.02 / self.speedup, "rounds": 8}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of this test's own, no override, and a process that has decided nothing yet."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(folder))
    monkeypatch.delenv(precision.CPU_DTYPE_VARIABLE, raising=False)
    monkeypatch.setattr(precision, "_decisions", {})
    return folder


@pytest.fixture
def probe(monkeypatch):
    fake = Probe(1.8)
    monkeypatch.setattr(precision, "measure_bfloat16_speedup", fake)
    return fake


def new_process(monkeypatch):
    """What a later process sees: the file, not this process's memory of the decision."""
    monkeypatch.setattr(precision, "_decisions", {})


def kept(cache):
    return sorted((cache / precision.DECISION_FOLDER).glob("*.json"))


# ------------------------------------------------------------------------------------------------------
# Measured once, then read


def test_the_decision_is_kept_and_the_next_process_reads_it_without_measuring(cache, probe, monkeypatch):
    first = precision.cpu_dtype_decision()
    assert probe.calls == 1 and first.bfloat16_faster and first.measured_now and first.stored
    assert first.file == precision.decision_file() and first.file.parent == cache / "cpu-dtype"
    record = json.loads(first.file.read_text())
    assert record["format"] == precision.DECISION_FORMAT and record["key"] == precision.decision_key()
    assert record["key"]["torch"] == torch.__version__ and "flags" in record["key"]["cpu"]
    assert record["bfloat16_faster"] is True and record["speedup"] == 1.8 and record["threshold"] == 1.25
    assert time.strptime(record["measured_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert precision.cpu_dtype_decision() is first and probe.calls == 1  # once a process

    new_process(monkeypatch)
    again = precision.cpu_dtype_decision()
    assert probe.calls == 1 and not again.measured_now and again.stored
    assert (again.bfloat16_faster, again.speedup, again.measured_at) == (True, 1.8, first.measured_at)
    assert resolve_precision("auto", CPU) == "bfloat16" and probe.calls == 1


def test_a_fresh_process_reads_the_file_and_never_measures(cache, probe):
    precision.cpu_dtype_decision()
    code = (
        "from spectrosynth import precision\n"
        "def never(*a, **k): raise AssertionError('measured')\n"
        "precision.measure_bfloat16_speedup = never\n"
        "print(precision.auto_cpu_precision(), precision.cpu_dtype_decision().measured_now)\n"
    )
    env = {**os.environ, "SPECTROSYNTH_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["bfloat16", "False"]


def test_another_cpu_or_torch_measures_again_in_a_file_of_its_own(cache, probe, monkeypatch):
    precision.cpu_dtype_decision()
    other_cpu = {**precision.cpu_identity(), "model_name": "Some Other CPU"}
    monkeypatch.setattr(precision, "cpu_identity", lambda: other_cpu)
    assert precision.cpu_dtype_decision().key["cpu"]["model_name"] == "Some Other CPU"
    assert probe.calls == 2
    monkeypatch.setattr(torch, "__version__", "9.9.9+cpu")
    assert precision.cpu_dtype_decision().key["torch"] == "9.9.9+cpu"
    assert probe.calls == 3
    assert len(kept(cache)) == 3  # a shared home folder keeps each machine's decision
    new_process(monkeypatch)
    precision.cpu_dtype_decision()
    assert probe.calls == 3


@pytest.mark.parametrize("speedup,render,train", [(1.8, "bfloat16", True), (1.2, "float32", False)])
def test_the_threshold_decides(cache, monkeypatch, speedup, render, train):
    from spectrosynth.training.trainer import resolved_precision

    monkeypatch.setattr(precision, "measure_bfloat16_speedup", Probe(speedup))
    assert precision.cpu_dtype_decision().bfloat16_faster is train
    assert resolve_precision("auto", CPU) == render and precision.cpu_bfloat16_is_faster() is train
    assert resolved_precision("auto", CPU) == ("bfloat16" if train else "float32")


def test_a_cpu_slow_at_bfloat16_could_be_switched_to_int8_but_training_never_is(cache, monkeypatch):
    from spectrosynth.training.trainer import _autocast_dtype, resolved_precision

    monkeypatch.setattr(precision, "measure_bfloat16_speedup", Probe(0.6))
    assert precision.SLOW_BFLOAT16_CPU_DTYPE == "float32"  # today's choice
    monkeypatch.setattr(precision, "SLOW_BFLOAT16_CPU_DTYPE", "int8")
    expected = "int8" if precision.int8_engine() is not None else "float32"
    assert resolve_precision("auto", CPU) == expected
    assert _autocast_dtype("auto", CPU) is None and resolved_precision("auto", CPU) == "float32"


def test_the_probe_measures_and_confirms_near_the_threshold(monkeypatch):
    result = precision.measure_bfloat16_speedup(rounds=3, budget_s=0.0)
    assert result["speedup"] > 0 and result["rounds"] >= 3 and result["threads"] == torch.get_num_threads()
    assert result["float32_s"] / result["bfloat16_s"] == pytest.approx(result["speedup"])

    calls = []

    def timings(ratio):
        def best(rounds, budget_s):
            calls.append(rounds)
            return ratio * 0.01, 0.01, rounds

        return best

    monkeypatch.setattr(precision, "_best_times", timings(3.0))
    assert precision.measure_bfloat16_speedup()["confirmed"] is False and len(calls) == 1
    calls.clear()
    monkeypatch.setattr(precision, "_best_times", timings(1.3))  # near 1.25: measured again, longer
    result = precision.measure_bfloat16_speedup()
    assert result["confirmed"] is True and calls == [precision.PROBE_ROUNDS, 2 * precision.PROBE_ROUNDS]


# ------------------------------------------------------------------------------------------------------
# The override


def test_the_variable_wins_over_the_kept_decision(cache, probe, monkeypatch):
    precision.cpu_dtype_decision()
    monkeypatch.setenv("SPECTROSYNTH_CPU_DTYPE", "float32")
    assert resolve_precision("auto", CPU) == "float32" and precision.cpu_bfloat16_is_faster() is False
    monkeypatch.setattr(precision, "measure_bfloat16_speedup", Probe(0.5))
    new_process(monkeypatch)
    monkeypatch.setenv("SPECTROSYNTH_CPU_DTYPE", "BFloat16")
    assert resolve_precision("auto", CPU) == "bfloat16" and precision.cpu_bfloat16_is_faster() is True
    monkeypatch.setenv("SPECTROSYNTH_CPU_DTYPE", "")  # empty: unset
    assert resolve_precision("auto", CPU) == "bfloat16" and probe.calls == 1  # the kept decision
    assert resolve_precision("float32", CPU) == "float32"  # an explicit --dtype is not overridden


def test_a_bad_override_is_a_one_line_error(cache, probe, monkeypatch, tmp_path, waltz, tiny_model):
    monkeypatch.setenv("SPECTROSYNTH_CPU_DTYPE", "int4")
    with pytest.raises(SpectrosynthError, match="SPECTROSYNTH_CPU_DTYPE='int4'.*float32 or bfloat16"):
        resolve_precision("auto", CPU)
    result = CliRunner().invoke(
        app, ["render", str(waltz), str(tmp_path / "a.wav"), "--model", str(tiny_model), "--device", "cpu"]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("spectrosynth: error: SPECTROSYNTH_CPU_DTYPE")
    assert result.stderr.count("\n") == 1 and "float32 or bfloat16" in result.stderr
    assert probe.calls == 0 and not (tmp_path / "a.wav").exists()


# ------------------------------------------------------------------------------------------------------
# Damaged files, unwritable caches, concurrent first runs


@pytest.mark.parametrize(
    "damage",
    ["not json", "truncated", "a list", "another key", "another format", "a string for the decision", "nan"],
)
def test_a_damaged_or_foreign_file_is_measured_again_and_rewritten(cache, probe, monkeypatch, damage):
    path = precision.cpu_dtype_decision().file
    record = json.loads(path.read_text())
    if damage == "not json":
        text = "\x00\xff garbage"
    elif damage == "truncated":
        text = path.read_text()[:40]
    elif damage == "a list":
        text = "[1, 2]"
    else:
        if damage == "another key":
            record["key"]["cpu"]["model_name"] = "Another CPU"
        elif damage == "another format":
            record["format"] = "spectrosynth-cpu-dtype/0"
        elif damage == "a string for the decision":
            record["bfloat16_faster"] = "yes"
        else:
            record["speedup"] = float("nan")
        text = json.dumps(record)
    path.write_text(text, encoding="utf-8")
    new_process(monkeypatch)
    decision = precision.cpu_dtype_decision()
    assert probe.calls == 2 and decision.measured_now and decision.stored
    assert json.loads(path.read_text())["key"] == precision.decision_key()
    new_process(monkeypatch)
    assert not precision.cpu_dtype_decision().measured_now and probe.calls == 2


@pytest.mark.parametrize("cache_setting", ["blocked", "off"])
def test_without_a_writable_cache_it_decides_for_this_process(tmp_path, probe, monkeypatch, cache_setting):
    monkeypatch.delenv(precision.CPU_DTYPE_VARIABLE, raising=False)
    monkeypatch.setattr(precision, "_decisions", {})
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(blocker) if cache_setting == "blocked" else "off")
    decision = precision.cpu_dtype_decision()
    assert decision.bfloat16_faster and decision.measured_now and not decision.stored
    assert (decision.file is None) == (cache_setting == "off")
    assert resolve_precision("auto", CPU) == "bfloat16" and probe.calls == 1  # once a process, as before
    assert blocker.read_text() == "a file where the cache folder would be"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked"]


def test_a_read_only_cache_folder_decides_without_error(cache, probe, monkeypatch):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    cache.mkdir()
    cache.chmod(0o500)
    try:
        decision = precision.cpu_dtype_decision()
        assert decision.measured_now and not decision.stored and not decision.file.exists()
    finally:
        cache.chmod(0o700)


def test_concurrent_first_runs_leave_one_valid_file(cache, monkeypatch):
    def slow_probe(*args, **kwargs):
        time.sleep(0.002)
        return {"speedup": 1.8}

    monkeypatch.setattr(precision, "measure_bfloat16_speedup", slow_probe)
    path = precision.decision_file()
    seen, failures, done = [], [], threading.Event()

    def writer():
        try:
            for _ in range(20):
                precision.cpu_dtype_decision(remeasure=True)
        except Exception as e:  # pragma: no cover - reported below
            failures.append(e)

    def reader():
        while not done.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            seen.append(json.loads(text)["bfloat16_faster"])  # never half a file

    threads = [threading.Thread(target=writer) for _ in range(6)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert failures == [] and seen and all(seen)
    left = sorted(p.name for p in path.parent.iterdir())
    assert kept(cache) == [path] and left == sorted([path.name, ".lock"])  # no temporaries
    new_process(monkeypatch)
    assert precision.cpu_dtype_decision().stored


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: concurrent first runs each measure")
def test_concurrent_first_runs_wait_for_one_measurement(cache, monkeypatch):
    """Workers starting together (a batch's, torchrun's ranks) take the first one's decision instead of each
    measuring under the others' load."""
    calls = []

    def slow_probe(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)
        return {"speedup": 1.3 if len(calls) == 1 else 1.2}  # would decide otherwise if measured again

    monkeypatch.setattr(precision, "measure_bfloat16_speedup", slow_probe)
    monkeypatch.setattr(precision, "_decisions", _Forgetful())  # each thread as its own process
    decisions = []
    threads = [
        threading.Thread(target=lambda: decisions.append(precision.cpu_dtype_decision())) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(decisions) == 4
    assert all(d.bfloat16_faster and d.speedup == 1.3 for d in decisions)
    assert sum(d.measured_now for d in decisions) == 1


def test_concurrent_first_processes_agree_and_leave_a_valid_file(cache):
    code = (
        "import os, time\n"
        "from spectrosynth import precision\n"
        "def probe(*a, **k):\n"
        "    time.sleep(0.5)\n"
        "    return {'speedup': 1.0 + (os.getpid() % 1000) / 1000}\n"
        "precision.measure_bfloat16_speedup = probe\n"
        "d = precision.cpu_dtype_decision()\n"
        "print(d.speedup, d.measured_now)\n"
    )
    env = {**os.environ, "SPECTROSYNTH_CACHE": str(cache)}
    runs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=180)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    speedups = {float(speedup) for speedup, _ in outputs}
    record = json.loads(precision.decision_file().read_text())
    assert len(speedups) == 1 and record["speedup"] == round(speedups.pop(), 4)
    assert sum(measured == "True" for _, measured in outputs) >= 1


class _Forgetful(dict):
    """A process memory that keeps nothing."""

    def __setitem__(self, key, value):
        pass


# ------------------------------------------------------------------------------------------------------
# doctor


def test_doctor_reports_the_decision_and_remeasures(cache, probe, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    section = json.loads(result.output)["cpu_dtype"]
    path = str(precision.decision_file())
    assert section["picks"] == "bfloat16" and section["train_picks"] == "bfloat16"
    assert section["bfloat16_speedup"] == 1.8 and section["threshold"] == 1.25
    assert section["source"] == "measured now" and section["file"] == path and section["stored"] is True
    assert section["override"] is None and section["measured_at"]
    assert json.loads(result.output)["auto_dtype"]["cpu"] == "bfloat16"

    new_process(monkeypatch)
    section = json.loads(runner.invoke(app, ["doctor", "--json"]).output)["cpu_dtype"]
    assert section["source"] == "kept from an earlier measurement" and probe.calls == 1

    new_process(monkeypatch)
    monkeypatch.setattr(precision, "measure_bfloat16_speedup", Probe(1.1))
    result = runner.invoke(app, ["doctor", "--remeasure"])
    assert result.exit_code == 0, result.output
    assert "--dtype auto on this CPU" in result.output and path in result.output
    assert json.loads(open(path).read())["speedup"] == 1.1
    section = json.loads(runner.invoke(app, ["doctor", "--json"]).output)["cpu_dtype"]
    assert section["picks"] == "float32" and section["bfloat16_speedup"] == 1.1

    monkeypatch.setenv("SPECTROSYNTH_CPU_DTYPE", "bfloat16")
    report = json.loads(runner.invoke(app, ["doctor", "--json"]).output)
    section = report["cpu_dtype"]
    assert section["picks"] == "bfloat16" and section["override"] == "SPECTROSYNTH_CPU_DTYPE=bfloat16"
    assert section["source"] == "override" and section["bfloat16_speedup"] == 1.1  # the kept one, shown
    assert report["environment"]["SPECTROSYNTH_CPU_DTYPE"] == "bfloat16"


def test_doctor_with_an_override_and_nothing_kept_does_not_measure(cache, probe, monkeypatch):
    monkeypatch.setenv("SPECTROSYNTH_CPU_DTYPE", "float32")
    section = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)["cpu_dtype"]
    assert section["picks"] == "float32" and section["source"] == "override; not measured"
    assert section["bfloat16_speedup"] is None and probe.calls == 0
    monkeypatch.setenv("SPECTROSYNTH_CPU_DTYPE", "fp8")
    section = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)["cpu_dtype"]
    assert "SPECTROSYNTH_CPU_DTYPE='fp8'" in section["override"]["error"]
    assert "error" in section["picks"] and section["bfloat16_speedup"] == 1.8  # measured all the same
