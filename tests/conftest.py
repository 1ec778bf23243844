from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REAL_MIDI = sorted((DATA / "midi").rglob("*.mid"))


@pytest.fixture(scope="session", autouse=True)
def converted_cache(tmp_path_factory):
    """Converted model copies (spectrosynth.converted) go to a temporary folder, never the user's cache;
    subprocesses inherit it."""
    import os

    folder = tmp_path_factory.mktemp("spectrosynth-cache")
    previous = os.environ.get("SPECTROSYNTH_CACHE")
    os.environ["SPECTROSYNTH_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SPECTROSYNTH_CACHE", None)
    else:
        os.environ["SPECTROSYNTH_CACHE"] = previous


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
