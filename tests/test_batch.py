"""Batch rendering as a library and from the command line: shards, lists, continuous batching, the manifest,
the settings check, crash safety and the status view. Offline, on the tiny checkpoint, on the CPU."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from batch_helpers import outputs
from typer.testing import CliRunner

from spectrosynth.batch import (
    RenderSettings,
    by_shard,
    parse_shard,
    plan,
    read_files_from,
    read_status,
    shard_of,
)
from spectrosynth.batch.jobs import Job, Result
from spectrosynth.batch.manifest import ManifestWriter, check_settings, latest, read_lines
from spectrosynth.batch.render import BatchStats, render_jobs
from spectrosynth.batch.writers import sweep_stale, writer_alive
from spectrosynth.cli import app
from spectrosynth.errors import SpectrosynthError
from spectrosynth.outputs import OutputSettings

DATA = Path(__file__).parent / "data" / "midi"
runner = CliRunner()


def batch(*args, **kwargs):
    return runner.invoke(app, ["batch", *map(str, args)], **kwargs)


@pytest.fixture
def collection(tmp_path):
    """Eight real songs in a small tree: in/*.mid and in/more/*.mid."""
    root = tmp_path / "in"
    (root / "more").mkdir(parents=True)
    songs = sorted((DATA / "nottingham").glob("*.mid"))[:8]
    for i, song in enumerate(songs):
        shutil.copy(song, root / ("more" if i % 2 else "") / song.name)
    return root


@pytest.fixture
def args(tiny_model):
    """Short, quick renders: 2 s of each song (one segment), 2 steps, float32 on the CPU."""
    return ["--model", tiny_model, "--device", "cpu", "--dtype", "float32", "--steps", "2", "--duration", "2"]


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.part")]


# --------------------------------------------------------------------------------------------------------
# Shards and lists


def test_shards_are_disjoint_complete_stable_and_balanced():
    keys = [f"lakh/{a}/{b:05d}.mid" for a in "0123456789abcdef" for b in range(120)]
    groups = by_shard(keys, 7)
    assert sorted(k for g in groups.values() for k in g) == sorted(keys)  # complete, and each once
    assert all(abs(len(g) - len(keys) / 7) < 0.2 * len(keys) / 7 for g in groups.values())  # balanced
    shuffled = list(reversed(keys))  # another machine lists the files in another order
    assert {i: sorted(g) for i, g in by_shard(shuffled, 7).items()} == {
        i: sorted(g) for i, g in groups.items()
    }
    assert shard_of("a/b.mid", 4) == shard_of("a/b.mid", 4) and 1 <= shard_of("a/b.mid", 4) <= 4


@pytest.mark.parametrize("text,message", [("0/4", "from 1 to N"), ("5/4", "from 1 to N"), ("1-4", "I/N")])
def test_bad_shards(text, message):
    assert parse_shard("3/16") == (3, 16)
    with pytest.raises(SpectrosynthError, match=message):
        parse_shard(text)


def test_files_from_reads_relative_and_inside_paths(tmp_path, collection):
    listing = tmp_path / "list.txt"
    first = sorted(collection.rglob("*.mid"))[0]
    listing.write_text(f"# songs\n\nmore/x.mid\n{first}\nmore/x.mid\n")
    assert read_files_from(str(listing), collection) == [
        "more/x.mid",
        first.relative_to(collection).as_posix(),
    ]
    listing.write_text("/etc/passwd\n")
    with pytest.raises(SpectrosynthError, match="not inside"):
        read_files_from(str(listing), collection)
    listing.write_text("../x.mid\n")
    with pytest.raises(SpectrosynthError, match="leaves the input folder"):
        read_files_from(str(listing), collection)


def test_three_shards_render_what_one_run_renders_byte_for_byte(tmp_path, collection, args):
    assert batch(collection, tmp_path / "whole", *args).exit_code == 0
    counts = []
    for i in (1, 2, 3):
        result = batch(collection, tmp_path / "shards", *args, "--shard", f"{i}/3")
        assert result.exit_code == 0, result.output
        counts.append(len(outputs(tmp_path / "shards")))
    whole, shards = outputs(tmp_path / "whole"), outputs(tmp_path / "shards")
    assert len(whole) == 8 and shards == whole
    assert counts[0] < counts[1] < counts[2] == 8  # each shard added its own files
    status = read_status(tmp_path / "shards")
    assert status.ok == 8 and status.workers == 3


def test_files_from_stdin_and_a_missing_file_fails_alone(tmp_path, collection, args):
    keys = sorted(p.relative_to(collection).as_posix() for p in collection.rglob("*.mid"))[:3]
    result = batch(
        collection, tmp_path / "out", *args, "--files-from", "-", input="\n".join([*keys, "gone.mid"])
    )
    assert result.exit_code == 1 and "gone.mid: no such file" in result.stderr
    assert sorted(outputs(tmp_path / "out")) == sorted(k.replace(".mid", ".wav") for k in keys)


# --------------------------------------------------------------------------------------------------------
# Continuous batching


def _settings(**changes):
    base = RenderSettings("tiny", None, "float32", "diffusers", 3, 1.0, 0, output=OutputSettings(fmt="wav"),
                          save_mel=True)  # fmt: skip
    return replace(base, **changes)


def _job(song: Path, out: Path) -> Job:
    return Job(song.name, song, out / f"{song.stem}.wav", out / f"{song.stem}.npy")


def _passes(segments: list[int], size: int) -> list[int]:
    """Rows in each pass of continuous batching: a finished song's slot is refilled at once."""
    queue, slots, rows = list(segments), [], []
    while queue or slots:
        while queue and len(slots) < size:
            slots.append(queue.pop(0))
        rows.append(len(slots))
        slots = [left - 1 for left in slots if left > 1]
    return rows


def test_continuous_batching_matches_solo_renders(tmp_path, tiny_synth):
    """Songs of different lengths, 3 at a time: a finished song's slot goes to the next, so passes stay full
    until the queue empties, and every song equals its render alone (diffusers' sampler, float32)."""
    songs = sorted((DATA / "nottingham").glob("*.mid"))[:6]
    settings = _settings(duration=16.0)  # up to 4 segments, fewer for shorter songs
    segments, alone = [], {}
    for song in songs:
        job = Job(
            song.name, song, tmp_path / "alone" / f"{song.stem}.wav", tmp_path / "alone" / f"{song.stem}.npy"
        )
        (result,) = render_jobs([job], tiny_synth, settings, batch_size=1)
        assert result.ok
        segments.append(result.segments)
        alone[song.name] = np.load(job.mel_target)
    stats = BatchStats()
    jobs = [
        Job(s.name, s, tmp_path / "cont" / f"{s.stem}.wav", tmp_path / "cont" / f"{s.stem}.npy")
        for s in songs
    ]
    results = list(render_jobs(jobs, tiny_synth, settings, batch_size=3, stats=stats))
    assert [r.status for r in results] == ["ok"] * len(songs)
    assert stats.per_pass == _passes(segments, 3) and stats.rows == sum(segments)  # no padding rows
    fixed = sum(
        max(segments[i : i + 3]) for i in range(0, len(segments), 3)
    )  # groups waiting for their longest
    assert stats.passes <= fixed
    for job in jobs:
        np.testing.assert_allclose(np.load(job.mel_target), alone[job.rel], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------------
# The manifest and the settings


def test_manifest_round_trip_ignores_a_torn_line(tmp_path):
    job = Job("a/b.mid", tmp_path / "b.mid", tmp_path / "out" / "a" / "b.wav")
    with ManifestWriter(tmp_path / "out", "w-test-1", "abc") as manifest:
        manifest.record(Result(job, "failed", "a/b.mid: broken", "MidiError"))
        time.sleep(0.01)
        manifest.record(
            Result(replace(job, attempt=2), "ok", audio_seconds=3.0, segments=1, render_seconds=1.5)
        )
        manifest.record(Result(job, "skipped"))
    with open(manifest.path, "a") as f:
        f.write('{"input": "c.mid", "status": "o')  # a writer killed mid-line
    lines = list(read_lines(tmp_path / "out"))
    assert [line["status"] for line in lines] == ["failed", "ok", "skipped"]
    assert lines[1]["attempt"] == 2 and lines[1]["output"] == "a/b.wav" and lines[1]["settings"] == "abc"
    assert latest(tmp_path / "out")["a/b.mid"]["status"] == "ok"  # a later skip does not hide the render


_WRITE_LINES = """
import sys, time
from pathlib import Path
from spectrosynth.batch.jobs import Job, Result
from spectrosynth.batch.manifest import ManifestWriter
out, tag = Path(sys.argv[1]), sys.argv[2]
with ManifestWriter(out, tag, "abc") as manifest:
    for i in range(200):
        job = Job(f"{tag}/{i:03d}.mid", out / "x.mid", out / f"{tag}/{i:03d}.wav")
        manifest.record(Result(job, "ok", audio_seconds=1.0, error="x" * (i % 7) * 300))
"""


def test_two_writers_record_concurrently(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITE_LINES, str(tmp_path), tag]) for tag in ("w-a", "w-b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = list(read_lines(tmp_path))
    assert len(lines) == 400 and len({line["input"] for line in lines}) == 400
    assert read_status(tmp_path).ok == 400


def test_changed_settings_are_refused_unless_forced(tmp_path):
    check_settings(tmp_path, _settings(), force=False)
    check_settings(tmp_path, _settings(), force=False)  # the same: fine
    with pytest.raises(SpectrosynthError, match=r"other settings \(steps 3 -> 5\); use --force"):
        check_settings(tmp_path, _settings(steps=5), force=False)
    check_settings(tmp_path, _settings(steps=5), force=True)
    check_settings(tmp_path, _settings(steps=5), force=False)


def test_a_resume_with_other_settings_is_refused_from_the_command_line(tmp_path, collection, args):
    assert batch(collection, tmp_path / "out", *args).exit_code == 0
    result = batch(collection, tmp_path / "out", *args, "--seed", "3")
    assert result.exit_code == 1 and "seed 0 -> 3" in result.stderr and result.stderr.count("\n") == 1
    assert batch(collection, tmp_path / "other", *args, "--seed", "3").exit_code == 0


# --------------------------------------------------------------------------------------------------------
# Crash safety


_HOLD_WRITER = """
import sys, time
from pathlib import Path
from spectrosynth import audio
from spectrosynth.batch.writers import Writer
out = Path(sys.argv[1])
with Writer(out):
    fd, part = audio._create_part(str(out / sys.argv[2]))
    print(part, flush=True)
    time.sleep(120)
"""


def test_stale_temporaries_of_dead_writers_only_are_removed(tmp_path):
    def writer(name):
        command = [sys.executable, "-c", _HOLD_WRITER, str(tmp_path), name]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    alive, dead = writer("a.wav"), writer("b.wav")
    try:
        alive_part, dead_part = Path(alive.stdout.readline().strip()), Path(dead.stdout.readline().strip())
        untagged = tmp_path / ".c.wav.0123abcd.part"  # a `render` temporary: not a batch writer's
        untagged.write_bytes(b"")
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=30)
        assert alive_part.exists() and dead_part.exists()
        removed = sweep_stale(tmp_path)
        assert removed == [dead_part] and alive_part.exists() and untagged.exists()
        locks = list((tmp_path / ".spectrosynth" / "writers").glob("*.lock"))
        assert len(locks) == 1 and writer_alive(locks[0])
    finally:
        alive.kill()
        alive.wait(timeout=30)
    assert sweep_stale(tmp_path) == [alive_part]


def test_sigkill_then_resume_gives_the_uninterrupted_outputs(tmp_path, collection, tiny_model):
    args = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32", "--steps", "3",
            "--duration", "20", "--quiet"]  # fmt: skip
    reference = tmp_path / "reference"
    assert batch(collection, reference, *args).exit_code == 0
    out = tmp_path / "out"
    command = [sys.executable, "-m", "spectrosynth.cli", "batch", str(collection), str(out), *args]
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill it while a song is half written, after one is done
            if len(outputs(out)) >= 1 and leftovers(out):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the batch did not get going")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert leftovers(out) and 1 <= len(outputs(out)) < 8  # it was killed mid-song
    resumed = batch(collection, out, *args[:-1])
    assert resumed.exit_code == 0, resumed.output
    assert re.search(
        r"removed [1-9]\d* unfinished temporary files left by a run that was stopped", resumed.stderr
    )
    assert outputs(out) == outputs(reference)
    assert leftovers(out) == [] and list((out / ".spectrosynth" / "writers").glob("*")) == []


# --------------------------------------------------------------------------------------------------------
# Status


def test_status_sums_up_the_manifest(tmp_path, collection, args):
    (collection / "more" / "broken.mid").write_bytes(b"MThd garbage")
    first = batch(collection, tmp_path / "out", *args)
    assert first.exit_code == 1 and "most frequent errors" not in first.stderr  # one failure: no ranking
    status = read_status(tmp_path / "out")
    assert (status.files, status.ok, status.failed) == (9, 8, 1)
    assert status.audio_seconds == pytest.approx(8 * 3.0) and status.real_time_factor > 0
    assert status.failures[0][0] == "more/broken.mid" and "truncated" in status.failures[0][1]
    shown = runner.invoke(app, ["status", str(tmp_path / "out")])
    assert shown.exit_code == 0 and "most frequent errors" in shown.stdout and "truncated" in shown.stdout
    data = json.loads(runner.invoke(app, ["status", str(tmp_path / "out"), "--json"]).stdout)
    assert data["ok"] == 8 and data["failed"] == 1 and data["audio_hours"] == pytest.approx(24 / 3600)
    missing = runner.invoke(app, ["status", str(tmp_path)])
    assert missing.exit_code == 1 and "no batch manifest" in missing.stderr


def test_plan_maps_and_catches_clashes(tmp_path, collection):
    shutil.copy(next(collection.glob("*.mid")), collection / "dup.mid")
    shutil.copy(next(collection.glob("*.mid")), collection / "dup.midi")
    work = plan(collection, tmp_path / "out", "flac", save_mel=True)
    assert len(work.jobs) == 9 and [r.job.rel for r in work.clashes] == ["dup.midi"]
    job = next(j for j in work.jobs if j.rel == "dup.mid")
    assert job.target == tmp_path / "out" / "dup.flac" and job.mel_target == tmp_path / "out" / "dup.npy"
