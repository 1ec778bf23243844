"""`spectrosynth batch --ray` (spectrosynth.batch.distributed) on real Ray clusters, all on this machine.

One cluster is started for the module with `ray start --head --block` on loopback, in its own process group,
and stopped through that process alone (SIGTERM to `ray start`, then SIGKILL to its group; never a
machine-wide `ray stop`). The cluster and every driver use token authentication with a token made for the
module (so nothing is written to ~/.ray), keep their sessions in a temporary folder (not /tmp/ray) and send
no usage stats. The cluster's environment carries the crash test hook (SPECTROSYNTH_TEST_CRASH_ON=poison.mid),
so a song named poison.mid kills whichever worker renders it; no other test has a song of that name.
"""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from batch_helpers import outputs
from typer.testing import CliRunner

from spectrosynth.batch.distributed import CRASH_ENV, Renderer, _shape
from spectrosynth.batch.manifest import read_lines
from spectrosynth.batch.writers import sweep_stale
from spectrosynth.cli import app
from spectrosynth.errors import SpectrosynthError

pytestmark = pytest.mark.ray

DATA = Path(__file__).parent / "data" / "midi" / "nottingham"
POISON = "poison.mid"
runner = CliRunner()


def batch(*args, **kwargs):
    return runner.invoke(app, ["batch", *map(str, args)], **kwargs)


def manifest(out: Path) -> list[dict]:
    return list(read_lines(out))


def songs(folder: Path, count: int, poison: bool = False) -> Path:
    folder.mkdir(parents=True)
    for song in sorted(DATA.glob("waltzes*.mid"))[:count]:
        shutil.copy(song, folder / song.name)
    if poison:
        shutil.copy(DATA / "xmas1.mid", folder / POISON)
    return folder


@pytest.fixture
def args(tiny_model):
    """Quick renders: 2 s of each song (one segment), 2 steps, float32 on the CPU."""
    return ["--model", tiny_model, "--device", "cpu", "--dtype", "float32", "--steps", "2", "--duration", "2"]


@pytest.fixture(scope="module")
def ray_env():
    """Ray's settings for this module's clusters and drivers (the test process is the driver)."""
    # Ray's sessions (logs, unix sockets) go under here, not /tmp/ray; socket paths must stay short.
    root = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {
        "RAY_TMPDIR": root,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",  # what Ray does by default for a local cluster, with our own token
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv(CRASH_ENV, raising=False)
        yield env
    shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(ray_env):
    """A 2-CPU Ray cluster on loopback for the module's tests: its address."""
    pytest.importorskip("ray")
    port = _free_port()
    temp = Path(ray_env["RAY_TMPDIR"]) / "cluster"
    temp.mkdir()
    log = open(temp / "ray-start.log", "w+")  # closed below
    env = {**os.environ, **ray_env, CRASH_ENV: POISON}
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1",
               f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats",
               "--include-dashboard=false", f"--temp-dir={temp}", "--block"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in Path(log.name).read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start did not start:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        # SIGTERM to `ray start` stops the cluster's processes (with the whole group, `ray start` would wait
        # 30 s for a GCS already gone); then whatever is left of the group is killed.
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


# --------------------------------------------------------------------------------------------------------
# On a running cluster


def test_a_cluster_renders_what_a_plain_run_renders(tmp_path, args, cluster):
    # Byte for byte: each song has its own seeded generator in both modes, and a plain CPU run renders one
    # song at a time (batch size 1), as a worker does. The plain run uses this process's torch threads, the
    # workers one each; the tiny model's float32 results do not depend on that.
    folder = songs(tmp_path / "in", 4)
    plain = batch(folder, tmp_path / "plain", *args)
    assert plain.exit_code == 0, plain.output
    on_ray = batch(folder, tmp_path / "ray", *args, "--ray", cluster, "--workers", "2")
    assert on_ray.exit_code == 0, on_ray.output
    assert "Ray: 2 workers of 1 CPU" in on_ray.stderr
    expected = outputs(tmp_path / "plain")
    assert sorted(expected) == [f"waltzes{i}.wav" for i in (1, 10, 11, 12)]
    assert outputs(tmp_path / "ray") == expected
    lines = manifest(tmp_path / "ray")
    assert sorted(line["input"] for line in lines) == sorted(p.name for p in folder.iterdir())
    assert all(line["status"] == "ok" and line["attempt"] == 1 for line in lines)
    assert all(line["worker"].startswith("w-") for line in lines)  # the workers' writer tags
    assert list(tmp_path.rglob("*.part")) == []


def _kill_a_worker(out: Path, killed: list[int], stop: threading.Event) -> None:
    """Once the first song is out, SIGKILL a worker: a process holding a writer lock that is not us."""
    while not stop.is_set():
        if any(out.glob("*.wav")):
            for lock in (out / ".spectrosynth" / "writers").glob("*.lock"):
                try:
                    pid = int(lock.read_text().split()[1])
                except (OSError, IndexError, ValueError):
                    continue  # being written, or gone
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.02)


def test_a_killed_worker_is_replaced_and_its_song_rendered_again(tmp_path, tiny_model, cluster):
    folder, out = songs(tmp_path / "in", 6), tmp_path / "out"
    # Songs of about a second each, so that the kill lands while both workers are rendering.
    slow = ["--model", tiny_model, "--device", "cpu", "--dtype", "float32", "--steps", "100", "--duration",
            "20"]  # fmt: skip
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker, args=(out, killed, stop), daemon=True)
    killer.start()
    try:
        result = batch(folder, out, *slow, "--ray", cluster, "--workers", "2")
    finally:
        stop.set()
        killer.join(10)
    assert killed, "no worker was killed"
    assert result.exit_code == 0, result.output
    rendered = [name for name in outputs(out) if not name.endswith(".part")]
    assert sorted(rendered) == sorted(p.with_suffix(".wav").name for p in folder.iterdir())
    lines = manifest(out)
    assert all(line["status"] == "ok" for line in lines) and len(lines) == 6
    retried = [line for line in lines if line["attempt"] == 2]
    assert len(retried) == 1, lines
    assert f"{retried[0]['input']}: its Ray worker died; trying again (attempt 2 of 2)" in result.stderr
    assert retried[0]["worker"].rsplit("-", 2)[1] != str(killed[0])  # w-<host>-<pid>-<random>
    # Rendered again whole: the same bytes as a plain run of that song alone.
    (tmp_path / "list").write_text(retried[0]["input"] + "\n")
    alone = batch(folder, tmp_path / "alone", *slow, "--files-from", tmp_path / "list")
    assert alone.exit_code == 0, alone.output
    assert outputs(tmp_path / "alone") == {retried[0]["output"]: (out / retried[0]["output"]).read_bytes()}
    # The killed worker's unfinished temporary (if it had begun writing) is the only leftover, and the next
    # run's sweep removes it.
    assert len(sweep_stale(out)) <= 1
    assert list(out.rglob("*.part")) == []


def test_a_song_that_kills_its_worker_fails_alone(tmp_path, args, cluster, monkeypatch):
    folder, out = songs(tmp_path / "in", 3, poison=True), tmp_path / "out"
    monkeypatch.setenv("RAY_ADDRESS", cluster)  # --ray auto joins the cluster RAY_ADDRESS names
    result = batch(folder, out, *args, "--ray", "auto", "--workers", "2", "--max-attempts", "2")
    assert result.exit_code == 1, result.output
    lines = {line["input"]: line for line in manifest(out)}
    assert len(lines) == 4
    poisoned = lines.pop(POISON)
    assert poisoned["status"] == "failed" and poisoned["error_type"] == "WorkerDied"
    assert poisoned["attempt"] == 2
    died = f"{POISON}: its Ray worker died while rendering it, in all 2 attempts"
    assert poisoned["error"].startswith(died)
    assert all(line["status"] == "ok" and line["attempt"] == 1 for line in lines.values()), lines
    assert sorted(outputs(out)) == sorted(f"{Path(name).stem}.wav" for name in lines)
    assert f"error: {poisoned['error']}" in result.stderr


def test_batched_workers_isolate_a_song_that_kills_them(tmp_path, args, cluster):
    """--batch-size 2: a worker gets 4 songs per call and renders 2 per pass. When the poisonous song kills
    it, every song of the call is charged an attempt and sent again alone: the others go through."""
    folder, out = songs(tmp_path / "in", 3, poison=True), tmp_path / "out"
    result = batch(folder, out, *args, "--ray", cluster, "--workers", "1", "--batch-size", "2")
    assert result.exit_code == 1, result.output
    lines = {line["input"]: line for line in manifest(out)}
    poisoned = lines.pop(POISON)
    assert (poisoned["status"], poisoned["error_type"], poisoned["attempt"]) == ("failed", "WorkerDied", 2)
    assert [(line["status"], line["attempt"]) for line in lines.values()] == [("ok", 2)] * 3
    assert sorted(outputs(out)) == sorted(f"{Path(name).stem}.wav" for name in lines)


def test_the_worker_renders_the_songs_of_a_call_and_returns_file_errors_as_results(
    tmp_path, tiny_model, cluster
):
    ray = pytest.importorskip("ray")
    from spectrosynth.batch import RenderSettings
    from spectrosynth.batch.jobs import Job
    from spectrosynth.outputs import OutputSettings

    settings = RenderSettings(str(tiny_model), None, "float32", "unipc", 2, 2.0, 0, duration=2.0,
                              output=OutputSettings())  # fmt: skip
    out = tmp_path / "out"
    (tmp_path / "broken.mid").write_bytes(b"not a MIDI file")
    good = Job("a.mid", DATA / "waltzes1.mid", out / "a.wav")
    other = Job("b.mid", DATA / "waltzes2.mid", out / "b.wav")
    bad = Job("broken.mid", tmp_path / "broken.mid", out / "broken.wav")
    ray.init(address=cluster, log_to_driver=False)
    try:
        worker = (
            ray.remote(Renderer).options(num_cpus=1).remote(str(out), settings, str(tiny_model), "cpu", 1)
        )
        info = ray.get(worker.ready.remote(), timeout=60)
        assert info["error"] is None and info["tag"].startswith("w-")
        pid = ray.get(worker.pid.remote())
        assert pid == info["pid"] != os.getpid()
        assert (out / ".spectrosynth" / "writers" / f"{info['tag']}.lock").is_file()  # its writer, held
        (ok,), (failed,) = ray.get([worker.render.remote([good], False), worker.render.remote([bad], False)])
        assert (ok.status, ok.job.rel, ok.worker, ok.segments) == ("ok", "a.mid", info["tag"], 1)
        assert (out / "a.wav").is_file()
        assert (failed.status, failed.error_type) == ("failed", "MidiError")
        assert failed.error.startswith("broken.mid: ")
        together = ray.get(worker.render.remote([good, other], True, 2))  # two songs per pass
        assert sorted((r.job.rel, r.status) for r in together) == [("a.mid", "ok"), ("b.mid", "ok")]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.render.remote([good], True), timeout=60)
    finally:
        ray.shutdown()


def test_a_model_that_cannot_load_stops_the_run(tmp_path, args, cluster):
    folder = songs(tmp_path / "in", 2)
    bad = [*args]
    bad[bad.index("--model") + 1] = str(tmp_path / "no-model")
    result = batch(folder, tmp_path / "out", *bad, "--ray", cluster, "--workers", "2")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("spectrosynth: error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"spectrosynth: error: no such model folder: {tmp_path / 'no-model'}; ")
    assert manifest(tmp_path / "out") == []


# --------------------------------------------------------------------------------------------------------
# A private cluster, and no Ray at all


def test_ray_local_starts_a_private_cluster_that_the_crash_hook_reaches(tmp_path, args, ray_env, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv(CRASH_ENV, POISON)  # the driver passes it on to the workers it starts
    folder = songs(tmp_path / "in", 2, poison=True)
    plain = batch(folder, tmp_path / "plain", *args)
    assert plain.exit_code == 0, plain.output  # the hook acts in Ray workers only
    on_ray = batch(folder, tmp_path / "ray", *args, "--ray", "local", "--workers", "1", "--max-attempts", "1")
    assert on_ray.exit_code == 1, on_ray.output
    expected = outputs(tmp_path / "plain")
    del expected["poison.wav"]
    assert outputs(tmp_path / "ray") == expected
    lines = {line["input"]: line for line in manifest(tmp_path / "ray")}
    assert lines[POISON]["error_type"] == "WorkerDied" and lines[POISON]["attempt"] == 1


def test_ray_missing_is_a_one_line_error(tmp_path, args, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without the extra
    result = batch(songs(tmp_path / "in", 1), tmp_path / "out", *args, "--ray", "local")
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith("spectrosynth: error: --ray needs Ray: pip install 'spectrosynth[ray]'\n")
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------------------------
# How many workers, and what each reserves


def _nodes(*resources: dict) -> list[dict]:
    return [{"Alive": True, "Resources": r} for r in resources] + [{"Alive": False, "Resources": {"CPU": 64}}]


@pytest.mark.parametrize(
    "nodes,device,workers,expected",
    [
        ([{"CPU": 2}], "auto", None, (1, 2.0, 0.0, 2)),  # one worker per 2 CPUs
        ([{"CPU": 2}], "cpu", 2, (2, 1.0, 0.0, 1)),
        ([{"CPU": 16}], "auto", None, (8, 2.0, 0.0, 2)),
        ([{"CPU": 2}], "cpu", 4, (4, 0.5, 0.0, 1)),  # more workers than CPUs share them
        ([{"CPU": 5}, {"CPU": 3}], "cpu", 2, (2, 3.0, 0.0, 3)),  # 8 // 2 = 4 would fit on one node only
        ([{"CPU": 8}, {"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}], "auto", None, (2, 1.0, 1.0, 0)),
        ([{"CPU": 8, "GPU": 2}], "auto", 4, (4, 1.0, 0.5, 0)),
        ([{"CPU": 8, "GPU": 2}], "cpu", None, (4, 2.0, 0.0, 2)),  # --device cpu leaves the GPUs alone
    ],
)
def test_worker_shape(nodes, device, workers, expected):
    shape = _shape(_nodes(*nodes), SimpleNamespace(device=device, workers=workers))
    assert (shape.count, shape.cpus, shape.gpus, shape.threads) == expected


def test_cuda_without_gpus_is_an_error():
    with pytest.raises(SpectrosynthError, match="the Ray cluster has no GPUs; use --device cpu"):
        _shape(_nodes({"CPU": 4}), SimpleNamespace(device="cuda", workers=None))
