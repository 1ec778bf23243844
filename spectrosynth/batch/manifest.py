"""The batch manifest: one JSON line per file attempt, and the run's settings, under `OUT/.spectrosynth/`.

    OUT/.spectrosynth/run.json                   the settings the folder is rendered with (and their digest)
    OUT/.spectrosynth/manifest/<writer>.jsonl    one line per file attempt, one file per writer

Each writer (a plain run, a shard, a Ray driver) appends to a file of its own, so concurrent shards and
machines never write to one file; a line is written with a single append and flushed to disk before the
next file is recorded. A line cut short by a crash is ignored when reading. Reading merges every writer's
file; for each input the latest attempt counts.

A line:

    {"input": "waltzes/waltzes2.mid", "output": "waltzes/waltzes2.wav", "status": "ok",
     "error_type": null, "error": null, "attempt": 1, "audio_s": 87.5, "segments": 18, "render_s": 41.2,
     "worker": "w-node7-4242-a1b2c3", "host": "node7", "started": 1764400000.1, "finished": 1764400041.3,
     "settings": "3f2a9c0d1e4b5a69"}

status is "ok" (rendered), "failed" (error_type and error say why) or "skipped" (its output exists).

Each run (one `spectrosynth batch` process: a plain run, a shard, a Ray driver) also records when it began,
before anything is planned or loaded, and when it ended, however it ended (done, an error, Ctrl-C):

    {"run": "start", "writer": "w-node7-4242-a1b2c3", "host": "node7", "pid": 4242, "time": 1764399990.2,
     "settings": "3f2a9c0d1e4b5a69", "shard": "3/64", "ray": null}
    {"run": "end", "writer": "w-node7-4242-a1b2c3", "host": "node7", "pid": 4242, "time": 1764400043.0,
     "outcome": "done", "error": null, "rendered": 1, "failed": 0, "skipped": 0}

outcome is "done", "failed" (error says why) or "stopped" (Ctrl-C). A run that was killed has no end line:
it ended at its last line. These lines have no "input": `read_lines` (the file attempts) leaves them out and
`read_runs` reads them. `status` takes the wall time from them: the runs' own time, gaps between runs left
out, runs side by side (shards) counted once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrosynth.batch.jobs import STATE_DIR, RenderSettings, Result
from spectrosynth.errors import SpectrosynthError

MANIFEST_DIR = "manifest"
RUN_FILE = "run.json"


def state_dir(out_dir: Path) -> Path:
    return Path(out_dir) / STATE_DIR


class ManifestWriter:
    """Appends this writer's lines to `OUT/.spectrosynth/manifest/<tag>.jsonl`."""

    def __init__(self, out_dir: Path, tag: str, settings_digest: str):
        self.out_dir, self.digest = Path(out_dir), settings_digest
        self.path = state_dir(out_dir) / MANIFEST_DIR / f"{tag}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.tag = tag

    def record(self, result: Result, started: float | None = None) -> dict[str, Any]:
        job = result.job
        finished = time.time()
        line = {
            "input": job.rel,
            "output": _relative(job.target, self.out_dir),
            "status": result.status,
            "error_type": result.error_type,
            "error": result.error,
            "attempt": job.attempt,
            "audio_s": round(result.audio_seconds, 3),
            "segments": result.segments,
            "render_s": round(result.render_seconds, 3),
            "worker": result.worker or self.tag,
            "host": socket.gethostname(),
            "started": round(started if started is not None else finished - result.render_seconds, 3),
            "finished": round(finished, 3),
            "settings": self.digest,
        }
        if result.loudness is not None:  # with --loudness
            line["loudness_lufs"] = round(result.loudness, 2)
        # a skip is found again by the next run: no need to wait for the disk
        self._append(line, sync=result.status != "skipped")
        return line

    def run_started(self, began: float | None = None, **info: Any) -> dict[str, Any]:
        """Record that this writer's run began (at `began`, a Unix time; now by default)."""
        line = {"run": "start", **self._who(), "time": round(began if began is not None else time.time(), 3),
                "settings": self.digest, **info}  # fmt: skip
        self._append(line, sync=True)
        return line

    def run_ended(self, outcome: str, error: str | None = None, **info: Any) -> dict[str, Any]:
        """Record that this writer's run ended: "done", "failed" (with the error) or "stopped"."""
        line = {"run": "end", **self._who(), "time": round(time.time(), 3), "outcome": outcome,
                "error": error, **info}  # fmt: skip
        self._append(line, sync=True)
        return line

    def _who(self) -> dict[str, Any]:
        return {"writer": self.tag, "host": socket.gethostname(), "pid": os.getpid()}

    def _append(self, line: dict[str, Any], sync: bool) -> None:
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        os.write(self._fd, data)  # one append: a line is never split by another write
        if sync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def is_attempt(line: dict[str, Any]) -> bool:
    """Whether a manifest line records a file attempt (not a run's start or end)."""
    return "input" in line and "status" in line and "run" not in line


def read_lines(out_dir: Path) -> Iterator[dict[str, Any]]:
    """Every file attempt of every writer's manifest, oldest file first; torn or foreign lines and the runs'
    start and end lines skipped."""
    for _, lines in _read_files(out_dir):
        yield from (line for line in lines if is_attempt(line))


def _read_files(out_dir: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """Every writer's manifest file, oldest first, with its complete JSON object lines, in order."""
    folder = state_dir(out_dir) / MANIFEST_DIR
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl"), key=_mtime):
        lines = []
        with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
            for text in f:
                if not text.endswith("\n"):
                    break  # a line cut short by a crash
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(line, dict):
                    lines.append(line)
        yield path, lines


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed while listing
        return 0.0


@dataclass
class Run:
    """One run's time, from its start and end lines (or, killed or still running, its last line)."""

    writer: str
    host: str | None
    start: float
    end: float
    outcome: str | None  # "done", "failed", "stopped"; None without an end line (killed, or still running)
    path: Path  # its manifest file

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def read_runs(out_dir: Path) -> tuple[list[Run], dict[Path, list[dict[str, Any]]]]:
    """The runs recorded in the manifest, and by manifest file the file attempts recorded outside any run
    (by versions that wrote no run lines). A file's attempts after a run's start line belong to that run; a
    run without an end line ends at its last line."""
    runs: list[Run] = []
    loose: dict[Path, list[dict[str, Any]]] = {}
    for path, lines in _read_files(out_dir):
        current: Run | None = None
        for line in lines:
            kind = line.get("run")
            if kind == "start" and _number(line.get("time")) is not None:
                current = Run(str(line.get("writer") or path.stem), line.get("host"), line["time"],
                              line["time"], None, path)  # fmt: skip
                runs.append(current)
            elif kind == "end" and current is not None and _number(line.get("time")) is not None:
                current.end, current.outcome = max(current.end, line["time"]), line.get("outcome") or "done"
                current = None
            elif kind is None and is_attempt(line):
                if current is None:
                    loose.setdefault(path, []).append(line)
                else:
                    current.end = max(current.end, _number(line.get("finished")) or current.end)
    return runs, loose


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def merged_seconds(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end] intervals: time covered twice counts once."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def latest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """For each input, its latest attempt (by finishing time) across all writers. A "skipped" line counts
    only for an input that has no other: skipping does not change what the last render gave."""
    last: dict[str, dict[str, Any]] = {}
    for line in read_lines(out_dir):
        key, previous = line["input"], last.get(line["input"])
        if previous is None:
            last[key] = line
        elif (line["status"] == "skipped") == (previous["status"] == "skipped"):
            if line.get("finished", 0) >= previous.get("finished", 0):
                last[key] = line
        elif previous["status"] == "skipped":
            last[key] = line
    return last


def check_settings(out_dir: Path, settings: RenderSettings, force: bool) -> None:
    """Record the run's settings in OUT/.spectrosynth/run.json, or refuse settings that differ from those the
    folder was rendered with (a resumed dataset must not mix settings), unless `force`."""
    path = state_dir(out_dir) / RUN_FILE
    record = {"settings": settings.to_dict(), "digest": settings.digest}
    for _ in range(3):
        existing = _read_run(path)
        if existing is None or force:
            try:
                _write_run(path, record, replace=existing is not None)
                return
            except FileExistsError:  # another shard wrote it first: compare with theirs
                continue
        if existing["digest"] == settings.digest:
            return
        changed = _differences(RenderSettings.with_defaults(existing.get("settings", {})),
                               RenderSettings.with_defaults(settings.to_dict()))  # fmt: skip
        raise SpectrosynthError(
            f"{out_dir} was rendered with other settings ({changed}); use --force to render it again with "
            "these, or give another output folder"
        )
    raise SpectrosynthError(f"{path}: could not be written; check the folder's permissions")


def _read_run(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise SpectrosynthError(f"{path} is damaged ({e}); remove it to render the folder again") from None
    return data if isinstance(data, dict) and "digest" in data else {"digest": None}


def _write_run(path: Path, record: dict[str, Any], replace: bool) -> None:
    from spectrosynth.audio import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path, force=replace) as f:
            f.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    except SpectrosynthError:
        if path.exists() and not replace:
            raise FileExistsError(path) from None
        raise


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            if inner:
                changes.append(inner)
        elif a != b and not (isinstance(a, list) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            changes.append(f"{prefix}{key} {a!r} -> {b!r}")
    return ", ".join(changes)
