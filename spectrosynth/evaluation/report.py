"""What `spectrosynth evaluate` shows: progress on stderr while files are scored, then a table of scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from spectrosynth.progress import CountedDisplay


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class EvaluateProgressDisplay(CountedDisplay):
    """Files scored out of those planned: a bar on a terminal, one line per file otherwise, nothing when
    quiet; a file that fails is one error line even when quiet (it is the run's finding)."""

    label, starting = "evaluate", "loading the transcriber"

    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        super().__init__(quiet, stream)
        self.done = self.failed = 0

    def __call__(self, label: str, result: dict[str, Any] | None, error: str | None) -> None:
        self.done += 1
        if error is not None:
            self.failed += 1
            self._print(f"spectrosynth: error: {error}")
        elif not self.quiet and self._bar is None:
            self._print(f"spectrosynth: [{self.done}/{self.total}] {label}: note F1 "
                        f"{_number(result['note_f1'])}, seam {_number(result['seam'], 2)}")  # fmt: skip
        self._update(completed=self.done, line=f"{self.failed} failed" if self.failed else "")


def _label(path: str, root: Path | None) -> str:
    """A file's path relative to the MIDI folder (its name when it is not under it)."""
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return Path(path).name


def print_table(report: dict[str, Any], with_reference: bool, root: Path | None = None, console=None) -> None:
    """One row per file scored, named relative to `root` (the MIDI folder), and a mean row: a rich table on
    stdout unless `console` says otherwise."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    table = Table(title_justify="left", header_style="bold")
    columns = [("file", "left"), ("note F1", "right"), ("precision", "right"), ("recall", "right"),
               ("seam", "right")]  # fmt: skip
    if with_reference:
        columns.append(("mel L1", "right"))
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    for f in report["files"]:
        row = [_label(f["input"], root), _number(f["note_f1"]), _number(f["precision"]), _number(f["recall"]),
               _number(f["seam"], 2)]  # fmt: skip
        if with_reference:
            row.append(_number(f.get("mel_l1")))
        table.add_row(*row)
    mean = report["mean"]
    row = [f"mean of {len(report['files'])}", _number(mean["note_f1"]), "", "", _number(mean["seam"], 2)]
    if with_reference:
        row.append(_number(mean.get("mel_l1")))
    if report["files"]:
        table.add_section()
    table.add_row(*row, style="bold")
    console.print(table)
