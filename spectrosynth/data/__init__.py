"""Training data: (MIDI, audio) pairs -> a Parquet dataset (build), and reading it back (store)."""

from spectrosynth.data.build import BuildReport, DatasetSettings, build_dataset, find_pairs, split_of
from spectrosynth.data.store import DatasetError, DatasetReader, Song, SongRef

__all__ = [
    "BuildReport",
    "DatasetError",
    "DatasetReader",
    "DatasetSettings",
    "Song",
    "SongRef",
    "build_dataset",
    "find_pairs",
    "split_of",
]
