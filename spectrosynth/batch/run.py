"""A whole batch run: plan it, make the output folder safe to resume, render (here or on a Ray cluster) and
record every attempt.

    plan (jobs.plan)         find the inputs, keep this shard's, map them to outputs, catch clashes
    check (manifest)         refuse settings that differ from those the folder was rendered with
    sweep (writers)          remove temporaries left by writers that died
    skip                     outputs that exist; files that failed before (unless retry_failed)
    render (render / ray)    continuous batching here, or one model per worker on Ray
    record (manifest)        one line per attempt, as each finishes, between the run's start and end lines

The library reports through a `BatchProgress` sink and never prints; the command line draws it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from spectrosynth.batch.jobs import Job, Result, plan
from spectrosynth.batch.manifest import ManifestWriter, check_settings, latest
from spectrosynth.batch.options import BatchOptions, BatchProgress, NoProgress
from spectrosynth.batch.status import error_kind
from spectrosynth.batch.writers import Writer, sweep_stale
from spectrosynth.errors import SpectrosynthError


@dataclass
class BatchReport:
    """The tally of one run."""

    began: float = field(default_factory=time.monotonic)
    rendered: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, error)
    loudness: list[float] = field(default_factory=list)  # LUFS of each file rendered with --loudness

    def add(self, result: Result) -> None:
        if result.status == "ok":
            self.rendered += 1
            self.audio_seconds += result.audio_seconds
            if result.loudness is not None and result.loudness > -math.inf:
                self.loudness.append(result.loudness)
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed.append((result.job.rel, result.error or result.error_type or "failed"))

    @property
    def wall_seconds(self) -> float:
        return time.monotonic() - self.began

    def top_errors(self, n: int = 10) -> list[tuple[str, int]]:
        return Counter(error_kind(message, rel) for rel, message in self.failed).most_common(n)


def run_batch(
    options: BatchOptions,
    load: Callable[[], object],
    progress: BatchProgress | None = None,
    report: BatchReport | None = None,
) -> BatchReport:
    """Render a folder (or this shard of it) as `options` say; `load()` gives the Synthesizer, called once,
    only when a song is ready to render. Returns the tally; per-file failures are in it, not raised."""
    began = time.time()  # the run's start, as the manifest records it: planning and the model's load count
    progress = progress or NoProgress()
    report = report or BatchReport()
    o, settings = options, options.settings
    if not o.in_dir.is_dir():
        raise SpectrosynthError(f"{o.in_dir}: no such folder; give the folder that holds the MIDI files")
    if o.out_dir.exists() and not o.out_dir.is_dir():
        raise SpectrosynthError(f"{o.out_dir} is a file; give a folder for the audio")
    work = plan(o.in_dir, o.out_dir, settings.output.fmt, files_from=o.files_from, shard=o.shard,
                save_mel=settings.save_mel)  # fmt: skip
    if not work.jobs and not work.clashes:
        if o.shard is not None and work.listed:
            progress.note(f"shard {o.shard[0]}/{o.shard[1]} holds none of the {work.listed} files")
            return report
        where = "the list" if o.files_from is not None else f"{o.in_dir} (searched every subfolder)"
        raise SpectrosynthError(f"no .mid or .midi files in {where}")
    if o.ray is not None:  # a missing Ray fails before anything is written
        from spectrosynth.batch.distributed import _import_ray

        _import_ray()
    o.out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(o.out_dir, settings, o.force)
    removed = sweep_stale(o.out_dir)
    if removed:
        progress.note(f"removed {len(removed)} unfinished temporary files left by a run that was stopped")
    with Writer(o.out_dir) as writer, ManifestWriter(o.out_dir, writer.tag, settings.digest) as manifest:
        manifest.run_started(began, shard=f"{o.shard[0]}/{o.shard[1]}" if o.shard else None, ray=o.ray)
        outcome, error = "failed", None
        rendered = failed = skipped = 0

        def record(result: Result) -> None:
            nonlocal rendered, failed, skipped
            manifest.record(result)
            rendered += result.status == "ok"
            skipped += result.status == "skipped"
            failed += result.status not in ("ok", "skipped")
            report.add(result)
            progress.result(result)

        try:
            for result in work.clashes:
                record(result)
            todo = list(_to_render(work.jobs, o, record))
            progress.planned(len(work.jobs) + len(work.clashes), len(todo))
            if todo:
                if o.ray is not None:
                    from spectrosynth.batch.distributed import render_on_ray

                    results = render_on_ray(todo, o, progress)
                else:
                    results = _render_here(todo, o, load, writer.tag, progress)
                for result in results:
                    record(result)
            outcome = "done"
        except KeyboardInterrupt:
            outcome = "stopped"
            raise
        except BaseException as e:
            error = str(e) if isinstance(e, SpectrosynthError) else f"{type(e).__name__}: {e}"
            raise
        finally:  # a run killed outright has no end line: it ended at its last line
            with contextlib.suppress(OSError):  # never hide the error that got us here
                manifest.run_ended(outcome, error, rendered=rendered, failed=failed, skipped=skipped)
    return report


def _to_render(jobs: list[Job], o: BatchOptions, record: Callable[[Result], None]) -> Iterator[Job]:
    """The jobs still to do; the others are recorded as skipped, with the reason as a note."""
    before = {} if o.force or o.retry_failed else latest(o.out_dir)
    for job in jobs:
        if job.target.exists() and not o.force:
            note = f"{job.rel}: skipped, {job.target} exists (--force renders it again)"
            record(Result(job, "skipped", notes=[note]))
            continue
        last = before.get(job.rel)
        if last and last.get("status") == "failed" and last.get("settings") == o.settings.digest:
            note = f"{job.rel}: skipped, it failed before ({last.get('error')}); --retry-failed tries again"
            record(Result(job, "skipped", notes=[note]))
            continue
        yield job


def _render_here(
    jobs: list[Job], o: BatchOptions, load, tag: str, progress: BatchProgress
) -> Iterator[Result]:
    from spectrosynth.batch.render import render_jobs

    synth = load()
    size = o.batch_size or (8 if synth.device.type == "cuda" else 1)
    yield from render_jobs(jobs, synth, o.settings, batch_size=size, force=o.force, worker=tag,
                           on_segment=progress.segment)  # fmt: skip
