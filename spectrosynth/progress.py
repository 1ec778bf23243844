"""Progress on stderr: a rich progress bar on a terminal, plain lines otherwise, nothing when quiet.

The library reports events through callbacks (`pipeline.Progress`, the batch's results, the dataset
builder's songs, `training.TrainProgress`); this module only draws them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TextIO

from spectrosynth.constants import SEGMENT_SECONDS

if TYPE_CHECKING:
    from spectrosynth.pipeline import Progress
    from spectrosynth.training import TrainProgress


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RenderProgress:
    """Callable progress sink for one song. Use as a context manager around the render.

    Shows segments and diffusion steps, elapsed time, the estimated time left and the speed as a multiple of
    real time (seconds of audio made per second of work). With `playback` (a playback.Player, for
    `render --play` and `play`), also what is playing: "buffering, plays in ~0:12", "playing 0:07/0:41",
    live in the bar, in each line otherwise.
    """

    def __init__(
        self,
        label: str,
        segments: int,
        steps: int,
        quiet: bool = False,
        stream: TextIO | None = None,
        playback: Playback | None = None,
    ):
        self.label, self.segments, self.steps, self.quiet = label, segments, steps, quiet
        self.playback = playback
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

            playing = [] if self.playback is None else [_status_column(self.playback.status)]
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("segment {task.fields[segment]}/{task.fields[segments]} step {task.fields[step]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[speed]}"),
                *playing,
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
            playing = "" if self.playback is None else f", {self.playback.status()}"
            print(
                f"{self.label}: segment {p.segment + 1}/{p.segments} ({p.fraction:.0%}), "
                f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}, {speed}{playing}",
                file=self.stream,
                flush=True,
            )


class Playback(Protocol):
    """What RenderProgress shows of a playback: spectrosynth.playback.Player."""

    def status(self) -> str: ...


def _status_column(status: Callable[[], str]):
    """A rich progress column showing `status()` at every refresh (the playhead moves between steps)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class StatusColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(status())

    return StatusColumn()


class _Live:
    """A rich progress bar on a terminal (None elsewhere or when quiet), and printing beside it."""

    def __init__(self, quiet: bool, stream: TextIO | None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._task = None

    def _start_bar(self, *columns, total: float | None, **fields) -> None:
        if self.quiet or not self.stream.isatty():
            return
        from rich.console import Console
        from rich.progress import Progress as Bar

        self._bar = Bar(*columns, console=Console(file=self.stream), transient=False)
        self._bar.start()
        self._task = self._bar.add_task("", total=total, **fields)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _print(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False, soft_wrap=True)
        else:
            print(message, file=self.stream, flush=True)

    def _update(self, **values) -> None:
        if self._bar is not None:
            self._bar.update(self._task, **values)


class BatchProgressDisplay(_Live):
    """Progress of a whole batch run on stderr (spectrosynth.batch.run.BatchProgress): files done and failed,
    audio rendered, speed as a multiple of real time, ETA and workers. A live line on a terminal, one line
    per finished file otherwise; notes (skips, warnings) as they come, nothing but errors when quiet."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        super().__init__(quiet, stream)
        self.total = self.to_render = self.done = self.failed = 0
        self.audio = 0.0
        self.alive: tuple[int, int] | None = None
        self._start = time.monotonic()

    def __enter__(self) -> BatchProgressDisplay:
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

        self._start = time.monotonic()
        columns = (BarColumn(), TextColumn("{task.fields[line]}"), TimeElapsedColumn())
        self._start_bar(TextColumn("batch"), *columns, total=None, line="planning")
        return self

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
        self._update(total=self.to_render or None, completed=self.done, line=self.line())


class CountedDisplay(_Live):
    """Items done out of those planned, for a command named `label`: a bar on a terminal, showing
    `starting` until the plan is known."""

    label = ""
    starting = ""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        super().__init__(quiet, stream)
        self.total = 0

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        columns = (BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[line]}"), TimeElapsedColumn())
        self._start_bar(TextColumn(self.label), *columns, total=None, line=self.starting)
        return self

    def planned(self, total: int) -> None:
        self.total = total
        self._update(total=total, line="")


class DatasetProgressDisplay(CountedDisplay):
    """`spectrosynth dataset`: songs added out of those to do; every unusable pair as a one-line note (even
    when quiet: they are the run's findings)."""

    label, starting = "dataset", "reading pairs"

    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        super().__init__(quiet, stream)
        self.added = self.rejected = 0

    def __call__(self, song: str, what: str, reason: str | None) -> None:
        if what == "rejected":
            self.rejected += 1
            self._print(f"spectrosynth: skipped {song}: {reason}")
        elif what == "added":
            self.added += 1
            if self._bar is None and not self.quiet:
                self._print(f"spectrosynth: [{self.added + self.rejected}/{self.total}] added {song}")
        self._update(completed=self.added, line=f"{self.rejected} unusable")


class TrainProgressDisplay(_Live):
    """`spectrosynth train`: step, loss, validation loss, examples/s and ETA; a bar on a terminal, one line
    per logged step otherwise; checkpoints and notes as lines."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        super().__init__(quiet, stream)
        self.val_loss: float | None = None

    def __enter__(self) -> TrainProgressDisplay:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        columns = (BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[line]}"), TimeElapsedColumn())
        self._start_bar(TextColumn("train"), *columns, total=None, line="starting")
        return self

    def __call__(self, p: TrainProgress) -> None:
        if p.event == "validation":
            self.val_loss = p.val_loss
        if self.quiet:
            return
        if p.event in ("start", "note"):
            self._print(f"spectrosynth: {p.message}")
        elif p.event == "checkpoint":
            self._print(f"spectrosynth: step {p.step}: checkpoint {p.message}")
        elif p.event == "validation":
            self._print(f"spectrosynth: step {p.step}: validation loss {p.val_loss:.4f}")
        elif p.event == "step":
            line = self.line(p)
            if self._bar is None:
                self._print(f"spectrosynth: step {p.step}/{p.max_steps}: {line}")
        if p.event == "step":
            self._update(total=p.max_steps, completed=p.step, line=self.line(p))

    def line(self, p: TrainProgress) -> str:
        parts = [f"loss {p.loss:.4f}" if p.loss is not None else "loss -",
                 f"val {self.val_loss:.4f}" if self.val_loss is not None else "val -"]  # fmt: skip
        if p.examples_per_second:
            parts.append(f"{p.examples_per_second:.1f} examples/s")
        if p.eta_seconds is not None:
            parts.append(f"ETA {_clock(p.eta_seconds)}")
        return ", ".join(parts)


class DownloadProgressDisplay(_Live):
    """A file being downloaded (spectrosynth.small_model.DownloadProgress): a bar with the bytes, speed and
    time left on a terminal; otherwise a line when it starts or resumes, every 10 %, at each retry and at the
    end. Nothing when quiet."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        super().__init__(quiet, stream)
        self._tenth, self._began, self._from = -1, time.monotonic(), 0

    def __enter__(self) -> DownloadProgressDisplay:
        from rich import progress as bar

        columns = [bar.BarColumn(), bar.DownloadColumn(), bar.TransferSpeedColumn()]
        columns.append(bar.TimeRemainingColumn())
        self._start_bar(bar.TextColumn("{task.fields[name]}"), *columns, total=None, name="download")
        return self

    def __call__(self, p) -> None:
        if self.quiet:
            return
        mb = f"{p.done / 1e6:.1f}"
        if p.event == "start":
            self._began, self._from = time.monotonic(), p.done
            self._tenth = p.done * 10 // p.total if p.total else -1
            size = f" ({p.total / 1e6:.1f} MB)" if p.total else ""
            self._print(f"spectrosynth: resuming {p.name} at {mb} MB" if p.resumed_from
                        else f"spectrosynth: downloading {p.name}{size}")  # fmt: skip
            self._update(total=p.total, completed=p.done, name=p.name)
        elif p.event == "bytes":
            self._update(completed=p.done)
            tenth = p.done * 10 // p.total if p.total else -1
            if self._bar is None and p.total and self._tenth < tenth < 10:
                self._tenth = tenth
                elapsed = time.monotonic() - self._began
                speed = (p.done - self._from) / elapsed / 1e6 if elapsed > 0 else 0.0
                self._print(f"spectrosynth: {p.name}: {tenth * 10}% ({mb} of {p.total / 1e6:.1f} MB), "
                            f"{speed:.1f} MB/s")  # fmt: skip
        elif p.event == "retry":
            self._print(f"spectrosynth: {p.name}: the connection dropped at {mb} MB ({p.message})")
        elif p.event == "done":
            self._update(completed=p.done)
            self._print(f"spectrosynth: downloaded {p.name} ({mb} MB)")
