from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REAL_MIDI = sorted((DATA / "midi").rglob("*.mid"))


@pytest.fixture(scope="session", autouse=True)
def converted_cache(tmp_path_factory):
    """Converted model copies (spectrosynth.converted) and the CPU's `--dtype auto` decision
    (spectrosynth.precision, measured once for the session) go to a temporary folder, never the user's
    cache; subprocesses inherit it. A SPECTROSYNTH_CPU_DTYPE override set in the shell is left out."""
    import os

    folder = tmp_path_factory.mktemp("spectrosynth-cache")
    previous = {name: os.environ.pop(name, None) for name in ("SPECTROSYNTH_CACHE", "SPECTROSYNTH_CPU_DTYPE")}
    os.environ["SPECTROSYNTH_CACHE"] = str(folder)
    yield folder
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def complex_midi() -> Path:
    """A real 18-track song with drums (magenta/note-seq test data)."""
    return DATA / "midi" / "note-seq" / "example_complex.mid"


@pytest.fixture
def waltz() -> Path:
    """A real two-track folk tune (Nottingham dataset)."""
    return DATA / "midi" / "nottingham" / "waltzes1.mid"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small random checkpoint in exactly the published layout (spectrosynth.testing)."""
    from spectrosynth.testing import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny-model"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_synth(tiny_model):
    from spectrosynth.pipeline import Synthesizer

    return Synthesizer.from_pretrained(tiny_model, device="cpu", dtype="float32")
