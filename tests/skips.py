"""Markers for tests that need something a machine may lack, shared by the test modules."""

from __future__ import annotations

import pytest

from spectrosynth import soundfont
from spectrosynth.errors import SpectrosynthError


def _fluidsynth_unavailable() -> str | None:
    try:
        soundfont._fluidsynth()
    except SpectrosynthError as e:
        return str(e)
    return None


FLUIDSYNTH_UNAVAILABLE = _fluidsynth_unavailable()
#: Skips a test when the FluidSynth library or its Python binding is missing (as on a user's machine).
needs_fluidsynth = pytest.mark.skipif(
    FLUIDSYNTH_UNAVAILABLE is not None, reason=f"no FluidSynth: {FLUIDSYNTH_UNAVAILABLE}"
)
