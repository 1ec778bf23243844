"""Render progress on stderr: a rich progress bar on a terminal, plain lines otherwise, nothing when quiet.

The library reports `pipeline.Progress` events through a callback; this module only draws them.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from spectrosynth.constants import SEGMENT_SECONDS
from spectrosynth.pipeline import Progress


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RenderProgress:
    """Callable progress sink for one song. Use as a context manager around the render.

    Shows segments and diffusion steps, elapsed time, the estimated time left and the speed as a multiple of
    real time (seconds of audio made per second of work).
    """

    def __init__(
        self, label: str, segments: int, steps: int, quiet: bool = False, stream: TextIO | None = None
    ):
        self.label, self.segments, self.steps, self.quiet = label, segments, steps, quiet
        self.stream = stream if stream is not None else sys.stderr
        self._start = time.monotonic()
        self._bar = None
        self._task = None
        self._last_segment = -1

    def __enter__(self) -> RenderProgress:
        self._start = time.monotonic()
        if self.quiet:
            return self
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("segment {task.fields[segment]}/{task.fields[segments]} step {task.fields[step]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[speed]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.label,
                total=self.segments * self.steps,
                segment=1,
                segments=self.segments,
                step=0,
                speed="",
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def speed(self, fraction: float) -> float:
        """Seconds of audio rendered per second of wall time so far."""
        elapsed = time.monotonic() - self._start
        return fraction * self.segments * SEGMENT_SECONDS / elapsed if elapsed > 0 else 0.0

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        speed = f"{self.speed(p.fraction):.2f}x real time"
        if self._bar is not None:
            done = p.segment * p.steps + p.step
            self._bar.update(
                self._task, completed=done, segment=p.segment + 1, step=f"{p.step}/{p.steps}", speed=speed
            )
        elif p.step == p.steps and p.segment != self._last_segment:  # one plain line per finished segment
            self._last_segment = p.segment
            elapsed = time.monotonic() - self._start
            eta = elapsed * (1 - p.fraction) / p.fraction if p.fraction > 0 else 0.0
            print(
                f"{self.label}: segment {p.segment + 1}/{p.segments} ({p.fraction:.0%}), "
                f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}, {speed}",
                file=self.stream,
                flush=True,
            )


class BatchProgressDisplay:
    """Progress of a whole batch run on stderr (spectrosynth.batch.run.BatchProgress): files done and failed,
    audio rendered, speed as a multiple of real time, ETA and workers. A live line on a terminal, one line
    per finished file otherwise; notes (skips, warnings) as they come, nothing but errors when quiet."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.total = self.to_render = self.done = self.failed = 0
        self.audio = 0.0
        self.alive: tuple[int, int] | None = None
        self._start = time.monotonic()
        self._bar = None
        self._task = None

    def __enter__(self) -> BatchProgressDisplay:
        self._start = time.monotonic()
        if not self.quiet and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("batch"), BarColumn(), TextColumn("{task.fields[line]}"), TimeElapsedColumn(),
                console=Console(file=self.stream), transient=False,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("batch", total=None, line="planning")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _print(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False, soft_wrap=True)
        else:
            print(message, file=self.stream, flush=True)

    def note(self, message: str) -> None:
        if not self.quiet:
            self._print(f"spectrosynth: {message}")

    def planned(self, total: int, to_render: int) -> None:
        self.total, self.to_render = total, to_render
        self._refresh()

    def segment(self, job, done: int, segments: int) -> None:
        self._refresh()

    def workers(self, alive: int, total: int) -> None:
        self.alive = (alive, total)
        self._refresh()

    def result(self, result) -> None:
        for message in result.notes:
            self.note(message)
        if result.status == "skipped":
            return
        self.done += 1
        if result.status == "failed":
            self.failed += 1
            self._print(f"spectrosynth: error: {result.error}")
        else:
            self.audio += result.audio_seconds
            if not self.quiet and self._bar is None:
                self._print(f"spectrosynth: [{self.done}/{self.to_render}] {result.job.rel}: "
                            f"{result.audio_seconds:.1f} s of audio in {result.render_seconds:.1f} s; "
                            f"{self.line()}")  # fmt: skip
        self._refresh()

    def line(self) -> str:
        """files done/failed, audio so far, speed, ETA, workers."""
        elapsed = time.monotonic() - self._start
        speed = self.audio / elapsed if elapsed > 0 else 0.0
        left = self.to_render - self.done
        eta = elapsed / self.done * left if self.done else 0.0
        parts = [f"{self.done}/{self.to_render} files", f"{self.failed} failed",
                 f"{_clock(self.audio)} audio", f"{speed:.2f}x real time",
                 f"ETA {_clock(eta)}" if self.done else "ETA -"]  # fmt: skip
        if self.alive is not None:
            parts.append(f"workers {self.alive[0]}/{self.alive[1]}")
        return ", ".join(parts)

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=self.to_render or None, completed=self.done, line=self.line())
