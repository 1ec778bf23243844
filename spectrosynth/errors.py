"""Errors a user can fix. The command line prints them as one line, without a traceback."""

from __future__ import annotations


class SpectrosynthError(Exception):
    """Base class: the message says what happened and what to do."""


class MidiError(SpectrosynthError):
    """A MIDI file that cannot be read."""
