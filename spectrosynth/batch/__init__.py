"""Batch rendering of MIDI collections, as a library: plan, render (here, by shard, or on Ray), record.

    from spectrosynth.batch import BatchOptions, RenderSettings, run_batch

The command line (`spectrosynth batch`, `spectrosynth status`) is a thin layer over this package;
docs/batch.md shows the ways to run a collection.
"""

from spectrosynth.batch.jobs import (
    Job,
    Plan,
    RenderSettings,
    Result,
    by_shard,
    find_midi_files,
    parse_shard,
    plan,
    read_files_from,
    shard_of,
)
from spectrosynth.batch.options import BatchOptions, BatchProgress, NoProgress
from spectrosynth.batch.run import BatchReport, run_batch
from spectrosynth.batch.status import Status, read_status

__all__ = [
    "BatchOptions",
    "BatchProgress",
    "BatchReport",
    "Job",
    "NoProgress",
    "Plan",
    "RenderSettings",
    "Result",
    "Status",
    "by_shard",
    "find_midi_files",
    "parse_shard",
    "plan",
    "read_files_from",
    "read_status",
    "run_batch",
    "shard_of",
]
