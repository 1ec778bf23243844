"""`make install`'s choice of PyTorch build, from the commands `make -n` prints: nothing is installed.

TORCH=cpu|cuda|auto (auto: cuda when `nvidia-smi -L` lists a GPU), macOS always PyPI's wheel, PyTorch's CPU
index on Linux unless pip is configured with its own package sources, TORCH_INDEX to override.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIP_VARIABLES = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    """A folder put first on PATH, for stand-ins of nvidia-smi and uname."""
    folder = tmp_path / "bin"
    folder.mkdir()
    return folder


def stand_in(folder: Path, name: str, output: str, code: int = 0) -> None:
    script = folder / name
    script.write_text(f"#!/bin/sh\nprintf '%b' '{output}'\nexit {code}\n")
    script.chmod(0o755)


def dry_run(*args: str, fake_bin: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`make -n install ARGS` in the repository; (exit code, stdout + stderr)."""
    base = {k: v for k, v in os.environ.items() if k not in PIP_VARIABLES and k != "TORCH_INDEX"}
    base["PIP_CONFIG_FILE"] = os.devnull  # no user or site pip config; the global one still applies
    if fake_bin is not None:
        base["PATH"] = f"{fake_bin}{os.pathsep}{base['PATH']}"
    base.update(env or {})
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "install", f"PYTHON={sys.executable}", *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=60,
    )
    return out.returncode, out.stdout + out.stderr


def torch_command(output: str) -> str:
    (line,) = [line for line in output.splitlines() if "pip install torch==" in line]
    return line.strip()


def no_gpu(fake_bin: Path) -> None:
    stand_in(fake_bin, "nvidia-smi", "", code=9)  # as when the driver is missing


def a_gpu(fake_bin: Path) -> None:
    stand_in(fake_bin, "nvidia-smi", "GPU 0: NVIDIA H200 (UUID: GPU-0123)\\n")


def test_cpu_on_linux_comes_from_pytorchs_cpu_index(fake_bin):
    no_gpu(fake_bin)
    code, out = dry_run("TORCH=cpu", "PIP_SOURCES=", "UNAME=Linux", fake_bin=fake_bin)
    assert code == 0, out
    assert torch_command(out) == f".venv/bin/python -m pip install torch==2.13.0 --index-url {CPU_INDEX}"
    assert "cpu build" in out and "PyTorch's CPU wheel index" in out


def test_torch_comes_first_then_spectrosynth(fake_bin):
    no_gpu(fake_bin)
    code, out = dry_run("TORCH=cpu", "PIP_SOURCES=", "UNAME=Linux", "VENV=/tmp/v", fake_bin=fake_bin)
    lines = [line for line in out.splitlines() if "pip install" in line]
    assert "torch==2.13.0" in lines[1] and lines[1].startswith("/tmp/v/bin/python -m pip install")
    assert lines[2] == '/tmp/v/bin/python -m pip install -e ".[test]"'


def test_cuda_is_pypis_wheel(fake_bin):
    no_gpu(fake_bin)
    code, out = dry_run("TORCH=cuda", "PIP_SOURCES=", "UNAME=Linux", fake_bin=fake_bin)
    assert code == 0, out
    assert torch_command(out) == ".venv/bin/python -m pip install torch==2.13.0"
    assert "cuda build" in out


def test_auto_is_cuda_when_nvidia_smi_lists_a_gpu(fake_bin):
    a_gpu(fake_bin)
    code, out = dry_run("PIP_SOURCES=", "UNAME=Linux", fake_bin=fake_bin)
    assert code == 0, out
    assert torch_command(out) == ".venv/bin/python -m pip install torch==2.13.0"
    assert "cuda build (auto: nvidia-smi lists a GPU)" in out


def test_auto_is_cpu_when_nvidia_smi_fails_or_lists_none(fake_bin):
    no_gpu(fake_bin)
    code, out = dry_run("PIP_SOURCES=", "UNAME=Linux", fake_bin=fake_bin)
    assert code == 0, out
    assert torch_command(out).endswith(f"--index-url {CPU_INDEX}")
    assert "cpu build (auto: nvidia-smi lists no GPU)" in out
    stand_in(fake_bin, "nvidia-smi", "No devices were found\\n")
    assert torch_command(dry_run("PIP_SOURCES=", "UNAME=Linux", fake_bin=fake_bin)[1]).endswith(CPU_INDEX)


@pytest.mark.parametrize("torch", ["auto", "cpu", "cuda"])
def test_macos_is_always_pypis_wheel(fake_bin, torch):
    a_gpu(fake_bin)
    stand_in(fake_bin, "uname", "Darwin\\n")
    code, out = dry_run(f"TORCH={torch}", "PIP_SOURCES=", fake_bin=fake_bin)
    assert code == 0, out
    assert torch_command(out) == ".venv/bin/python -m pip install torch==2.13.0"
    assert "macOS: PyPI's wheel (CPU and MPS)" in out


def test_pips_own_sources_decide_instead_of_the_cpu_index(fake_bin, tmp_path):
    no_gpu(fake_bin)
    code, out = dry_run("TORCH=cpu", "UNAME=Linux", fake_bin=fake_bin, env={"PIP_FIND_LINKS": str(tmp_path)})
    assert code == 0, out
    assert torch_command(out) == ".venv/bin/python -m pip install torch==2.13.0"
    assert "PIP_FIND_LINKS" in out and f"TORCH_INDEX={CPU_INDEX} forces it" in out
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nextra-index-url = https://mirror.example/simple\n")
    code, out = dry_run("TORCH=cpu", "UNAME=Linux", fake_bin=fake_bin, env={"PIP_CONFIG_FILE": str(config)})
    assert torch_command(out) == ".venv/bin/python -m pip install torch==2.13.0"
    assert "extra-index-url" in out


def test_pypi_itself_is_not_an_own_source(fake_bin):
    no_gpu(fake_bin)
    _, baseline = dry_run("TORCH=cpu", "UNAME=Linux", fake_bin=fake_bin)
    if CPU_INDEX not in torch_command(baseline):
        pytest.skip("this machine's global pip config names its own package sources")
    env = {"PIP_INDEX_URL": "https://pypi.org/simple"}
    _, out = dry_run("TORCH=cpu", "UNAME=Linux", fake_bin=fake_bin, env=env)
    assert torch_command(out).endswith(f"--index-url {CPU_INDEX}")
    env = {"PIP_INDEX_URL": "https://mirror.example/simple"}
    _, out = dry_run("TORCH=cpu", "UNAME=Linux", fake_bin=fake_bin, env=env)
    assert torch_command(out) == ".venv/bin/python -m pip install torch==2.13.0"


def test_torch_index_overrides_or_empties_the_choice(fake_bin):
    no_gpu(fake_bin)
    cu126 = "https://download.pytorch.org/whl/cu126"
    _, out = dry_run("TORCH=cuda", f"TORCH_INDEX={cu126}", "UNAME=Linux", fake_bin=fake_bin)
    assert torch_command(out) == f".venv/bin/python -m pip install torch==2.13.0 --index-url {cu126}"
    _, out = dry_run("TORCH=cpu", "TORCH_INDEX=", "PIP_SOURCES=", "UNAME=Linux", fake_bin=fake_bin)
    assert torch_command(out) == ".venv/bin/python -m pip install torch==2.13.0"
    assert "TORCH_INDEX is empty" in out


def test_a_wrong_torch_value_stops_before_anything_runs(fake_bin):
    no_gpu(fake_bin)
    code, out = dry_run("TORCH=gpu", fake_bin=fake_bin)
    assert code != 0 and "TORCH must be auto, cpu or cuda, not 'gpu'" in out
    assert "pip install" not in out
