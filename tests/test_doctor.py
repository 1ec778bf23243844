"""`spectrosynth doctor`: the report a user pastes into a bug report, as a dict, as text and as JSON."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants

from spectrosynth import doctor
from spectrosynth.testing import write_checkpoint
from spectrosynth.weights import DEFAULT_MODEL

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache in tmp_path (huggingface_hub reads the variables at import, so its
    constants are set too), offline."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("doctor-tiny") / "model", "tiny", seed=0)


def cache_snapshot(cache: Path, template: Path) -> Path:
    """The model in the hub cache's layout: refs/main naming a snapshot folder (as weights.py finds it)."""
    repo = cache / ("models--" + DEFAULT_MODEL.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    (repo / "blobs").mkdir()
    return Path(shutil.copytree(template, repo / "snapshots" / SHA))


def test_report_has_every_section_and_the_facts_of_this_machine(hub):
    report = doctor.collect()
    assert report["schema"] == "spectrosynth.doctor/1"
    assert list(report) == ["schema", *doctor.PROBES, "seconds"]
    errors = {
        name: section for name, section in report.items() if isinstance(section, dict) and "error" in section
    }
    assert errors == {}
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda"] == torch.version.cuda
    assert report["torch"]["threads"] == torch.get_num_threads()
    assert isinstance(report["torch"]["mps_available"], bool)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["packages"]["numpy"] == __import__("numpy").__version__
    assert report["packages"]["libsndfile"]
    assert report["auto_dtype"]["cpu"] in ("float32", "bfloat16")
    decision = report["cpu_dtype"]  # measured once for this test session's cache, then kept
    assert decision["picks"] == report["auto_dtype"]["cpu"] and decision["bfloat16_speedup"] > 0
    assert decision["stored"] is True and Path(decision["file"]).is_file()
    assert set(report["cpu"]["matrix_flags"]) <= set(doctor.CPU_FEATURES.values()) | {"amx_int8", "amx_tile"}
    assert report["environment"]["HF_HUB_OFFLINE"] == "1"
    assert report["seconds"] < 10  # about 2 s on a 2-core CPU, most of it importing torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_is_reported_absent_here():
    report = doctor.collect()
    assert report["cuda"]["available"] is False and report["cuda"]["reason"]
    assert set(report["auto_dtype"]) == {"cpu"}


def test_json_round_trips(hub):
    report = doctor.collect()
    assert json.loads(json.dumps(report)) == report


def test_model_absent_from_an_empty_cache(hub):
    model = doctor.collect()["model"]
    assert model["repo"] == DEFAULT_MODEL and model["hf_hub_cache"] == str(hub)
    assert model["cached"] is False and model["complete"] is False
    assert list(hub.iterdir()) == []  # nothing was downloaded


def test_model_found_complete_in_the_cache_then_incomplete(hub, tiny_template):
    snapshot = cache_snapshot(hub, tiny_template)
    model = doctor.collect()["model"]
    assert model["cached"] is True and model["complete"] is True and model["missing"] == []
    assert model["folder"] == str(snapshot) and model["size_gb"] > 0
    (snapshot / "melgan" / "model.onnx").unlink()
    model = doctor.collect()["model"]
    assert model["cached"] is True and model["complete"] is False
    assert model["missing"] == ["melgan/model.onnx"] and "download" in model["hint"]


def test_converted_cache_folder_and_size(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(tmp_path / "cache"))
    entry = tmp_path / "cache" / "converted" / "bfloat16-0123"
    entry.mkdir(parents=True)
    (entry / "decoder.safetensors").write_bytes(b"x" * 1000)
    cache = doctor.collect()["converted_cache"]
    assert cache["folder"] == str(tmp_path / "cache" / "converted") and cache["exists"] is True
    assert cache["entries"] == 1 and cache["precisions"] == ["bfloat16"] and cache["size_gb"] == 0.0
    monkeypatch.setenv("SPECTROSYNTH_CACHE", "off")
    assert doctor.collect()["converted_cache"] == {"enabled": False, "folder": None}


def test_a_failing_probe_is_reported_and_the_rest_still_run(monkeypatch):
    def broken():
        raise RuntimeError("the probe broke")

    monkeypatch.setitem(doctor.PROBES, "cuda", broken)
    report = doctor.collect()
    assert report["cuda"] == {"error": "RuntimeError: the probe broke"}
    assert report["torch"]["version"] == torch.__version__ and "providers" in report["onnxruntime"]
    text = doctor.format_report(report)
    assert re.search(r"CUDA devices:\n  error: +RuntimeError: the probe broke\n", text)
    assert "CPUExecutionProvider" in text


def test_a_failing_line_inside_a_section_is_reported_in_its_line(monkeypatch):
    def broken(name):
        raise OSError(f"cannot read {name}")

    monkeypatch.setattr(doctor, "package_version", broken)
    packages = doctor.collect()["packages"]
    assert packages["numpy"] == {"error": "OSError: cannot read numpy"}
    assert packages["libsndfile"]  # its own probe, unaffected
    assert "numpy:" in doctor.format_report({"packages": packages})


def test_text_is_grouped_aligned_key_value_lines(hub):
    text = doctor.format_report(doctor.collect())
    for title in ("torch:", "CUDA devices:", "CPU:", "onnxruntime (vocoder):", "packages:", "environment:"):
        assert f"\n{title}\n" in text
    rows = [re.match(r"  (.+?:) +(?=\S)", line) for line in text.splitlines() if line.startswith("  ")]
    assert len({row.end() for row in rows if row}) == 1  # every value starts in the same column
    assert re.search(rf"\n  version: +{re.escape(torch.__version__)}\n", text)


def test_devices_are_flattened_one_line_each():
    section = {
        "available": True,
        "devices": [
            {"index": 0, "name": "NVIDIA H200", "capability": "9.0", "memory_gb": 150.0, "bfloat16": True},
            {"error": "RuntimeError: no"},
        ],
    }
    rows = dict(doctor._rows(section))
    assert rows["cuda:0 name"] == "NVIDIA H200" and rows["cuda:0 bfloat16"] == "yes"
    assert rows["device"] == "error: RuntimeError: no"


# ------------------------------------------------------------------------------------------------------
# The command


def test_command_prints_text_and_json(hub):
    from typer.testing import CliRunner

    from spectrosynth.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "paste this into a bug report" in result.output and torch.__version__ in result.output
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["schema"] == doctor.SCHEMA and report["torch"]["version"] == torch.__version__
    assert report["model"]["cached"] is False


def test_command_exits_0_when_a_probe_fails(monkeypatch):
    from typer.testing import CliRunner

    from spectrosynth.cli import app

    def broken():
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setitem(doctor.PROBES, "onnxruntime", broken)
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["onnxruntime"] == {"error": "ImportError: No module named 'onnxruntime'"}
    assert report["torch"]["version"] == torch.__version__
