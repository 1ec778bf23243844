"""spectrosynth: render MIDI files to audio with the Spectrogram Diffusion model (Hawthorne et al., 2022).

    from spectrosynth import Synthesizer
    synth = Synthesizer.from_pretrained()          # google/music-spectrogram-diffusion, or a local folder
    result = synth.render("song.mid", seed=0)      # sampler="unipc", steps=20, guidance=2.0
    result.audio, result.sample_rate, result.mel

Heavy modules load on first use, so `import spectrosynth` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spectrosynth.pipeline import Progress, Rendering, Synthesizer

__all__ = ["Progress", "Rendering", "Synthesizer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from spectrosynth import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'spectrosynth' has no attribute {name!r}")
