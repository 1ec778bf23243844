"""What a batch folder's manifest says: done, failed and why, audio hours, throughput."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spectrosynth.batch.jobs import STATE_DIR
from spectrosynth.batch.manifest import latest, merged_seconds, read_lines, read_runs
from spectrosynth.batch.writers import WRITERS_DIR, writer_alive


@dataclass
class Status:
    """The latest attempt of every input recorded in a folder's manifest, summed up."""

    files: int = 0  # inputs with at least one line
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    attempts: int = 0  # lines, all attempts of all inputs
    audio_seconds: float = 0.0  # of the files rendered (latest attempt ok)
    render_seconds: float = 0.0  # time spent on those renders (summed over workers)
    # The runs' own time: the union of every run's [start, end] (gaps between runs left out, runs side by
    # side counted once). From a manifest without run lines (older versions): the first attempt's start to
    # the last one's end.
    wall_seconds: float = 0.0
    wall_time_from: str = "records"  # "runs"; "records": no run lines; "runs+records": some writers had none
    runs: int = 0  # runs recorded (processes: plain runs, shards, Ray drivers)
    runs_running: int = 0  # of those, still running
    runs_killed: int = 0  # of those, gone without an end line (killed, out of time, lost machine)
    span_seconds: float = 0.0  # from the first attempt's start to the last one's end, gaps included
    workers: int = 0
    hosts: int = 0
    errors: list[tuple[str, int]] = field(default_factory=list)  # most frequent first
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input, error)

    @property
    def audio_hours(self) -> float:
        return self.audio_seconds / 3600

    @property
    def real_time_factor(self) -> float:
        """Audio seconds made per wall-clock second of the runs (all workers together)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def files_per_hour(self) -> float:
        return self.ok / self.wall_seconds * 3600 if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items()}
        data.update(audio_hours=self.audio_hours, real_time_factor=self.real_time_factor,
                    files_per_hour=self.files_per_hour)  # fmt: skip
        return data


def error_kind(message: str, source: str = "") -> str:
    """An error message without the file it names, so that equal errors of different files count together."""
    if source and message.startswith(f"{source}: "):
        message = message[len(source) + 2 :]
    return re.sub(r"^\S+\.(mid|midi|wav|flac|npy): ", "", message, flags=re.IGNORECASE)


def read_status(out_dir: Path, top: int = 10) -> Status:
    lines = list(read_lines(out_dir))
    last = latest(out_dir)
    status = Status(files=len(last), attempts=len(lines))
    errors: Counter[str] = Counter()
    for key, line in sorted(last.items()):
        kind = line.get("status")
        if kind == "ok":
            status.ok += 1
            status.audio_seconds += line.get("audio_s") or 0.0
            status.render_seconds += line.get("render_s") or 0.0
        elif kind == "failed":
            status.failed += 1
            message = line.get("error") or line.get("error_type") or "unknown error"
            status.failures.append((key, message))
            errors[error_kind(message, key)] += 1
        elif kind == "skipped":
            status.skipped += 1
    rendered = [line for line in lines if line.get("status") != "skipped"]
    status.span_seconds = _span(rendered)
    _wall_time(out_dir, status)
    status.workers = len({line.get("worker") for line in lines})
    status.hosts = len({line.get("host") for line in lines})
    status.errors = errors.most_common(top)
    return status


def _span(lines: list[dict[str, Any]]) -> float:
    return _last(lines) - _first(lines) if lines else 0.0


def _first(lines: list[dict[str, Any]]) -> float:
    return min(line.get("started", 0) for line in lines)


def _last(lines: list[dict[str, Any]]) -> float:
    return max(line.get("finished", 0) for line in lines)


def _wall_time(out_dir: Path, status: Status) -> None:
    """The wall time from the runs' start and end lines; a run still going counts up to now. Attempts that
    no run line covers (writers of older versions) count from their file's first start to its last end."""
    runs, loose = read_runs(out_dir)
    if not runs:
        status.wall_seconds, status.wall_time_from = status.span_seconds, "records"
        return
    now = time.time()
    writers = Path(out_dir) / STATE_DIR / WRITERS_DIR
    intervals = []
    for run in runs:
        end = run.end
        if run.outcome is None:
            if _alive(writers / f"{run.writer}.lock"):
                status.runs_running += 1
                end = max(end, now)
            else:
                status.runs_killed += 1
        intervals.append((run.start, end))
    older = [[line for line in group if line.get("status") != "skipped"] for group in loose.values()]
    older = [group for group in older if group]
    intervals += [(_first(group), _last(group)) for group in older]  # one writer's file: one process
    status.runs = len(runs)
    status.wall_seconds = merged_seconds(intervals)
    status.wall_time_from = "runs+records" if older else "runs"


def _alive(lock: Path) -> bool:
    try:
        return writer_alive(lock)
    except OSError:  # a folder this user may only read: its writers cannot be asked
        return False
