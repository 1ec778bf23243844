from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REAL_MIDI = sorted((DATA / "midi").rglob("*.mid"))


@pytest.fixture
def complex_midi() -> Path:
    """A real 18-track song with drums (magenta/note-seq test data)."""
    return DATA / "midi" / "note-seq" / "example_complex.mid"


@pytest.fixture
def waltz() -> Path:
    """A real two-track folk tune (Nottingham dataset)."""
    return DATA / "midi" / "nottingham" / "waltzes1.mid"
