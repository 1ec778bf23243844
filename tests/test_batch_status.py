"""`spectrosynth status` throughput from the runs' own wall time (the manifest's run lines), and the batch
package's imports going one way (no module of spectrosynth.batch imports one that imports it back)."""

import ast
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spectrosynth.batch import BatchOptions, RenderSettings, read_status, run_batch
from spectrosynth.batch.manifest import latest, merged_seconds, read_lines, read_runs
from spectrosynth.batch.writers import Writer
from spectrosynth.errors import SpectrosynthError
from spectrosynth.outputs import OutputSettings

DATA = Path(__file__).parent / "data" / "midi"
BATCH = Path(__file__).parent.parent / "spectrosynth" / "batch"
DAY = 86400.0


def write_manifest(out: Path, tag: str, lines: list[dict]) -> Path:
    """A writer's manifest file, as a run (or an older version) would have left it."""
    path = out / ".spectrosynth" / "manifest" / f"{tag}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return path


def start(tag: str, at: float) -> dict:
    return {"run": "start", "writer": tag, "host": "node1", "pid": 1, "time": at, "settings": "abc",
            "shard": None, "ray": None}  # fmt: skip


def end(tag: str, at: float, outcome: str = "done", error: str | None = None) -> dict:
    return {"run": "end", "writer": tag, "host": "node1", "pid": 1, "time": at, "outcome": outcome,
            "error": error, "rendered": 0, "failed": 0, "skipped": 0}  # fmt: skip


def attempt(name: str, began: float, finished: float, status: str = "ok", worker: str = "w-x") -> dict:
    failed = status == "failed"
    return {"input": name, "output": name.replace(".mid", ".wav"), "status": status,
            "error_type": "MidiError" if failed else None, "error": f"{name}: broken" if failed else None,
            "attempt": 1, "audio_s": 10.0 if status == "ok" else 0.0, "segments": 2,
            "render_s": round(finished - began, 3), "worker": worker, "host": "node1", "started": began,
            "finished": finished, "settings": "abc"}  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# Wall time from the run lines


def test_a_gap_between_runs_is_not_working_time(tmp_path):
    t = 1_764_400_000.0
    write_manifest(tmp_path, "w-a", [start("w-a", t), attempt("a.mid", t + 10, t + 50), end("w-a", t + 60)])
    later = t + DAY  # stopped at night, resumed the next day
    write_manifest(tmp_path, "w-b", [start("w-b", later), attempt("b.mid", later + 30, later + 90),
                                     end("w-b", later + 100)])  # fmt: skip
    status = read_status(tmp_path)
    assert status.wall_time_from == "runs" and status.runs == 2
    assert status.wall_seconds == pytest.approx(60 + 100)  # the runs' own time, model loading included
    assert status.span_seconds == pytest.approx(DAY + 90 - 10)  # what was reported before
    assert status.files_per_hour == pytest.approx(2 / 160 * 3600)
    assert status.real_time_factor == pytest.approx(20 / 160)
    data = status.to_dict()
    assert data["wall_seconds"] == pytest.approx(160) and data["wall_time_from"] == "runs"


def test_shards_running_side_by_side_count_once(tmp_path):
    t = 1_764_400_000.0
    for i, (a, b) in enumerate([(0, 100), (50, 150), (60, 80), (400, 450)]):
        tag = f"w-shard{i}"
        lines = [start(tag, t + a), attempt(f"{i}.mid", t + a + 1, t + b - 1, worker=tag), end(tag, t + b)]
        write_manifest(tmp_path, tag, lines)
    status = read_status(tmp_path)
    assert status.runs == 4 and status.workers == 4
    assert status.wall_seconds == pytest.approx(150 + 50)  # [0, 150] and [400, 450]
    assert merged_seconds([(0, 10), (10, 20), (5, 6), (30, 30), (40, 35)]) == 20


def test_a_killed_run_ends_at_its_last_line(tmp_path):
    t = 1_764_400_000.0
    write_manifest(
        tmp_path,
        "w-killed",
        [start("w-killed", t), attempt("a.mid", t + 20, t + 40), attempt("b.mid", t + 40, t + 70)],
    )  # fmt: skip (then kill -9)
    write_manifest(tmp_path, "w-resumed", [start("w-resumed", t + 1000), attempt("c.mid", t + 1005, t + 1010),
                                           end("w-resumed", t + 1012)])  # fmt: skip
    status = read_status(tmp_path)
    assert status.runs == 2 and status.runs_killed == 1 and status.runs_running == 0
    assert status.wall_seconds == pytest.approx(70 + 12)
    killed = next(run for run in read_runs(tmp_path)[0] if run.writer == "w-killed")
    assert killed.outcome is None and killed.end == t + 70


def test_a_run_still_going_counts_up_to_now(tmp_path):
    now = time.time()
    with Writer(tmp_path, "w-live"):  # its lock held: a writer that still runs
        write_manifest(tmp_path, "w-live", [start("w-live", now - 50), attempt("a.mid", now - 40, now - 30)])
        status = read_status(tmp_path)
    assert status.runs_running == 1 and status.runs_killed == 0
    assert 50 <= status.wall_seconds < 50 + 60
    status = read_status(tmp_path)  # gone without an end line: killed
    assert status.runs_killed == 1 and status.wall_seconds == pytest.approx(20)


def test_old_manifests_without_run_lines_still_read(tmp_path):
    t = 1_764_400_000.0
    old = [attempt("a.mid", t, t + 10), attempt("b.mid", t + 10, t + 30, status="failed"),
           attempt("c.mid", t + 30, t + 50),
           attempt("a.mid", t + DAY, t + DAY + 5, status="skipped")]  # fmt: skip
    write_manifest(tmp_path, "w-old", old)
    status = read_status(tmp_path)
    assert (status.files, status.ok, status.failed, status.attempts) == (3, 2, 1, 4)
    assert status.wall_time_from == "records" and status.runs == 0
    assert status.wall_seconds == pytest.approx(50) == status.span_seconds  # as before: the records' span
    # A newer run into the same folder: its own time, and the older writer's file from its first start to
    # its last end.
    write_manifest(tmp_path, "w-new", [start("w-new", t + 2 * DAY), attempt("d.mid", t + 2 * DAY + 5,
                                       t + 2 * DAY + 8), end("w-new", t + 2 * DAY + 10)])  # fmt: skip
    status = read_status(tmp_path)
    assert status.wall_time_from == "runs+records" and status.runs == 1 and status.ok == 3
    assert status.wall_seconds == pytest.approx(50 + 10)


def test_run_lines_are_not_files(tmp_path):
    t = 1_764_400_000.0
    lines = [start("w-a", t), attempt("a.mid", t + 1, t + 2, status="failed"),
             end("w-a", t + 3, "failed", "the model could not be loaded")]  # fmt: skip
    write_manifest(tmp_path, "w-a", lines)
    assert [line["input"] for line in read_lines(tmp_path)] == ["a.mid"]
    assert list(latest(tmp_path)) == ["a.mid"]
    status = read_status(tmp_path)
    assert (status.files, status.attempts, status.failed, status.workers, status.hosts) == (1, 1, 1, 1, 1)
    assert status.errors == [("broken", 1)]  # the run's error is not a file's


# --------------------------------------------------------------------------------------------------------
# Real runs


@pytest.fixture
def songs(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for song in sorted((DATA / "nottingham").glob("*.mid"))[:3]:
        shutil.copy(song, root / song.name)
    return root


def _options(tiny_model, songs: Path, out: Path) -> BatchOptions:
    settings = RenderSettings(str(tiny_model), None, "float32", "diffusers", 2, 1.0, 0, duration=2.0,
                              output=OutputSettings(fmt="wav"))  # fmt: skip
    return BatchOptions(songs, out, settings, device="cpu")


def _run_lines(out: Path) -> Iterator[dict]:
    for path in sorted((out / ".spectrosynth" / "manifest").glob("*.jsonl")):
        for text in path.read_text().splitlines():
            line = json.loads(text)
            if "run" in line:
                yield line


def test_a_batch_records_its_run_and_status_takes_its_wall_time(tmp_path, songs, tiny_model, tiny_synth):
    def load():
        time.sleep(0.5)  # setup time (the model's load) is the run's time too
        return tiny_synth

    out = tmp_path / "out"
    began = time.time()
    report = run_batch(_options(tiny_model, songs, out), load)
    took = time.time() - began
    assert report.rendered == 3
    runs = list(_run_lines(out))
    assert [line["run"] for line in runs] == ["start", "end"]
    first, last = runs
    assert first["writer"] == last["writer"] and first["settings"] == last.get("settings", first["settings"])
    assert last["outcome"] == "done" and last["error"] is None and last["rendered"] == 3
    assert began - 0.01 <= first["time"] <= last["time"] <= began + took + 0.01
    status = read_status(out)
    assert status.wall_time_from == "runs" and status.runs == 1 and status.ok == 3
    assert status.render_seconds + 0.5 <= status.wall_seconds <= took + 0.01
    # A resumed run skips all three; it is a run of its own, and its skips are not files.
    run_batch(_options(tiny_model, songs, out), load)
    status = read_status(out)
    assert status.runs == 2 and (status.files, status.ok, status.skipped) == (3, 3, 0)
    assert [line["run"] for line in _run_lines(out)].count("end") == 2


@pytest.mark.parametrize("error,outcome", [(SpectrosynthError("no model here"), "failed"),
                                           (KeyboardInterrupt(), "stopped")])  # fmt: skip
def test_a_run_stopped_by_an_error_or_ctrl_c_records_its_end(tmp_path, songs, tiny_model, error, outcome):
    def load():
        raise error

    with pytest.raises(type(error)):
        run_batch(_options(tiny_model, songs, tmp_path / "out"), load)
    runs = list(_run_lines(tmp_path / "out"))
    assert [line["run"] for line in runs] == ["start", "end"] and runs[1]["outcome"] == outcome
    assert runs[1]["error"] == ("no model here" if outcome == "failed" else None)
    status = read_status(tmp_path / "out")
    assert status.runs == 1 and status.runs_killed == 0 and status.files == 0


# --------------------------------------------------------------------------------------------------------
# Imports go one way


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """For each module of a package folder, the package's modules it imports: at any level, inside
    functions and under TYPE_CHECKING too. `from package import name` imports the submodule `name` if there
    is one, else the package's __init__."""
    modules = {package if p.stem == "__init__" else f"{package}.{p.stem}": p for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.name  # `import a.b.c`: the innermost of the package's modules it names
                    while name and name not in modules:
                        name = name.rpartition(".")[0]
                    edges.update([name] if name else [])
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([package, *([base] if base else [])])  # one folder: every level is it
                if base == package:
                    for alias in node.names:
                        submodule = f"{package}.{alias.name}"
                        edges.add(submodule if submodule in modules else package)
                elif base in modules:
                    edges.add(base)
        edges.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports (its modules, the first one repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for other in sorted(graph.get(node, ())):
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_batch_package_has_no_import_circle():
    graph = import_graph(BATCH, "spectrosynth.batch")
    assert {"spectrosynth.batch.run", "spectrosynth.batch.distributed"} <= set(graph)
    # The detector sees the imports inside functions: run.py imports distributed.py lazily.
    assert "spectrosynth.batch.distributed" in graph["spectrosynth.batch.run"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert "spectrosynth.batch.run" not in graph["spectrosynth.batch.distributed"]


def test_the_import_circle_check_finds_lazy_and_type_checking_imports(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "__init__.py").write_text("from pkg.run import go\n")
    (folder / "run.py").write_text("def go():\n    from pkg.distributed import far\n    return far\n")
    (folder / "options.py").write_text("X = 1\n")
    (folder / "distributed.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .options import X\n"
        "if TYPE_CHECKING:\n    from pkg.run import go\n\ndef far():\n    return X\n"
    )
    assert find_cycle(import_graph(folder, "pkg")) == ["pkg.run", "pkg.distributed", "pkg.run"]
    (folder / "distributed.py").write_text("from pkg import X\n")  # through the package's __init__
    assert find_cycle(import_graph(folder, "pkg")) == ["pkg", "pkg.run", "pkg.distributed", "pkg"]
    (folder / "distributed.py").write_text("import pkg.options\n")
    assert find_cycle(import_graph(folder, "pkg")) is None
