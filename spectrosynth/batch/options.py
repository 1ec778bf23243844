"""What a batch run is given, shared by the run (run.py) and the Ray driver (distributed.py): the options and
the progress sink. Imports neither of them, so that the dependency goes one way:

    run.py -> distributed.py -> options.py, jobs.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from spectrosynth.batch.jobs import Job, RenderSettings, Result


class BatchProgress(Protocol):
    """Where a run reports. Every method is optional to act on."""

    def note(self, message: str) -> None: ...

    def planned(self, total: int, to_render: int) -> None: ...

    def segment(self, job: Job, done: int, segments: int) -> None: ...

    def result(self, result: Result) -> None: ...

    def workers(self, alive: int, total: int) -> None: ...


class NoProgress:
    def note(self, message: str) -> None:
        pass

    def planned(self, total: int, to_render: int) -> None:
        pass

    def segment(self, job: Job, done: int, segments: int) -> None:
        pass

    def result(self, result: Result) -> None:
        pass

    def workers(self, alive: int, total: int) -> None:
        pass


@dataclass
class BatchOptions:
    in_dir: Path
    out_dir: Path
    settings: RenderSettings
    device: str = "auto"
    batch_size: int | None = None  # None: 1 on a CPU, 8 on a GPU
    force: bool = False  # render again files whose output exists, and accept changed settings
    retry_failed: bool = False  # render again files whose last attempt failed
    shard: tuple[int, int] | None = None  # (I, N), 1-based
    files_from: str | None = None  # a list of inputs ('-': standard input) instead of walking in_dir
    ray: str | None = None  # "local", "auto" or HOST:PORT
    workers: int | None = None  # Ray workers (default: one per GPU, else per 2 CPUs)
    max_attempts: int = 2  # attempts per file when workers die (Ray)
