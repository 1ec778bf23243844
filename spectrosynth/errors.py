"""Errors a user can fix. The command line prints them as one line, without a traceback."""

from __future__ import annotations


class SpectrosynthError(Exception):
    """Base class: the message says what happened and what to do."""


class MidiError(SpectrosynthError):
    """A MIDI file that cannot be read."""


class ModelNotFoundError(SpectrosynthError):
    """No model folder, hub repository or revision by the name given."""


class ModelLayoutError(SpectrosynthError):
    """A model folder (or cached snapshot) that lacks files of the published layout."""


class HubError(SpectrosynthError):
    """The Hugging Face hub could not be reached or refused the download, and nothing usable is cached."""


class WeightsError(SpectrosynthError):
    """A weights or config file that cannot be read, or whose tensors do not fit the model."""


class RemapError(SpectrosynthError):
    """A --program, --track, --mute or --no-drums option that cannot be applied (spectrosynth.remap)."""


class OutputError(SpectrosynthError):
    """An output path, format or level setting that cannot be used, or a file that could not be written."""


class PlaybackError(SpectrosynthError):
    """Audio cannot be played: no PortAudio library, no output device, or one that refuses the settings
    (spectrosynth.playback)."""
