"""A run's log: OUT_DIR/metrics.csv (any CSV reader), TensorBoard events in OUT_DIR/tensorboard (when the
`tensorboard` package is installed: `tensorboard --logdir OUT_DIR`), and the loss curves as OUT_DIR/loss.png.

metrics.csv has one row per logged step: step, examples (seen so far), wall_seconds (of training, summed
over restarts), loss (mean over the steps since the last row), lr, grad_norm, examples_per_second, and
val_loss on the rows where the validation loss was measured (of the weight average, EMA, where the run keeps
one; val_loss_raw is then the raw weights'). A resumed run first drops the rows after its
checkpoint, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import types
from pathlib import Path

COLUMNS = (
    "step",
    "examples",
    "wall_seconds",
    "loss",
    "lr",
    "grad_norm",
    "examples_per_second",
    "val_loss",
    "val_loss_raw",
)
METRICS, TENSORBOARD, PLOT = "metrics.csv", "tensorboard", "loss.png"
_TAGS = {
    "loss": "train/loss",
    "val_loss": "validation/loss",
    "val_loss_raw": "validation/loss_raw_weights",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "examples_per_second": "train/examples_per_second",
}


class MetricsLog:
    def __init__(self, out_dir: Path, resume_step: int = 0):
        self.path = out_dir / METRICS
        self._truncate_after(resume_step)
        new = not self.path.exists()
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, COLUMNS)
        if new:
            self._csv.writeheader()
        self._tb = None
        try:
            # TensorBoard's writer needs no TensorFlow, but imports it when it is installed (seconds, and a
            # page of log lines): its "notf" switch module makes it use its own stub instead.
            sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / TENSORBOARD), purge_step=resume_step or None)
        except ImportError:  # tensorboard is optional: the CSV holds everything
            pass

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= step]
        part = self.path.with_name(f".{self.path.name}.tmp")
        with part.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(part, self.path)

    def write(self, step: int, **values: float | None) -> None:
        row = {"step": step, **{k: _fmt(v) for k, v in values.items()}}
        self._csv.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for key, tag in _TAGS.items():
                if values.get(key) is not None:
                    self._tb.add_scalar(tag, values[key], step)
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def read_metrics(path: Path) -> list[dict[str, float]]:
    """metrics.csv as a list of rows (empty cells left out)."""
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def plot_losses(metrics_csv: Path, png: Path, title: str = "") -> Path:
    """The training and validation loss against the step, written to `png` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    raw = [(r["step"], r["val_loss_raw"]) for r in rows if "val_loss_raw" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), lw=0.8, alpha=0.5, label="training loss")
        smooth = _smooth([v for _, v in train])
        ax.plot([s for s, _ in train], smooth, lw=1.6, color="C0", label="training loss (smoothed)")
    if val:
        label = "validation loss (EMA weights)" if raw else "validation loss"
        ax.plot(*zip(*val, strict=True), "o-", color="C3", ms=3, label=label)
    if raw:
        ax.plot(
            *zip(*raw, strict=True), "s--", color="C1", ms=2, lw=0.8, label="validation loss (raw weights)"
        )
    ax.axhline(math.sqrt(2 / math.pi), color="grey", ls=":", lw=1, label="predicting zero (0.798)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean |predicted noise - noise|")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    part = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(part)
    plt.close(fig)
    os.replace(part, png)
    return png


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, level = [], None
    for v in values:
        level = v if level is None else weight * level + (1 - weight) * v
        out.append(level)
    return out
