"""Rendering a batch on a Ray cluster (`spectrosynth batch --ray`): one model per worker, fed by the driver.

Ray Core actors, not Ray Data: a job is a path and minutes of work whose output is a file, so Ray Data's
blocks and object store buy nothing, and its infinite retries would loop on a file that crashes the model.

    worker (actor)   loads the Synthesizer once, holds a `Writer` on the output folder for its lifetime (so
                     its temporaries are swept only once it is gone) and renders the songs of each call
                     through the same `render_jobs` as a plain run: continuous batching, --batch-size
                     songs per pass (default 8 on a GPU, 1 on a CPU). Per-file errors come back as failed
                     Results.
    driver (here)    keeps every worker busy, one call at a time (a group of 2 x batch-size songs, or one
                     song on a CPU), and yields Results as calls finish; run.py records them, so only the
                     driver writes the manifest.

Fault tolerance is the driver's, not Ray's: actors run with max_restarts=0 and max_task_retries=0, so a file
that kills its worker cannot loop. When a worker dies the driver starts a new one and charges one attempt to
each song of the call it was running (a worker has one call at a time); a song tried again is sent alone,
so a poisonous file is soon isolated and the others of its group go through. After `options.max_attempts`
attempts a song is a failed Result with error_type "WorkerDied". An error while
loading the model is the same on every worker, so it stops the run with its one-line message.

Test hook: when SPECTROSYNTH_TEST_CRASH_ON is set in a worker's environment, the worker ends its process
(os._exit(1)) just before rendering any job whose relative path ends with that value. The driver forwards
the variable from its own environment to the workers it starts.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spectrosynth.batch.jobs import Job, RenderSettings, Result
from spectrosynth.batch.options import BatchOptions, BatchProgress
from spectrosynth.errors import SpectrosynthError

CRASH_ENV = "SPECTROSYNTH_TEST_CRASH_ON"  # the test hook (see the module docstring)
WAIT_SECONDS = 1.0  # how long the driver blocks in ray.wait: Ctrl-C and the placement check stay responsive
PLACEMENT_NOTE_SECONDS = 120.0  # no worker ready by then: say what the workers are waiting for
# Ray's variables that this module or ray.init set in the driver's own environment; restored afterwards, so
# that they do not outlive the run in a process that goes on (tests, notebooks).
_RAY_ENV = ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE")


# ---------------------------------------------------------------------------------------------------------
# The worker


class Renderer:
    """A Ray worker: one model, one writer, one song per `render` call. Wrapped by `ray.remote` in
    `render_on_ray`, so that this module imports without Ray."""

    def __init__(self, out_dir: str, settings: RenderSettings, model: str, device: str, threads: int):
        self.settings, self.tag, self.error = settings, "", None
        try:
            import torch

            from spectrosynth.batch.writers import Writer
            from spectrosynth.pipeline import Synthesizer

            if threads:
                torch.set_num_threads(threads)  # the CPUs Ray reserved for this worker, no more
            self.synth = Synthesizer.from_pretrained(model, revision=settings.revision, device=device,
                                                     dtype=settings.dtype, progress=False,
                                                     vocoder=settings.vocoder)  # fmt: skip
            writer = Writer(Path(out_dir)).__enter__()  # held for the process's lifetime
            atexit.register(writer.__exit__, None, None, None)  # a graceful exit removes the lock file too
            self.tag = writer.tag
        except Exception as e:  # kept, not raised: the driver stops the run with it instead of retrying
            self.error = str(e) if isinstance(e, SpectrosynthError) else f"{type(e).__name__}: {e}"

    def ready(self) -> dict[str, Any]:
        """Who this worker is, and the error that kept it from loading the model (None when it is ready)."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "tag": self.tag, "error": self.error}

    def pid(self) -> int:
        return os.getpid()

    def render(self, jobs: list[Job], force: bool, batch_size: int = 1) -> list[Result]:
        """Render songs with continuous batching, `batch_size` at a time; their Results, in the order
        they finished."""
        from spectrosynth.batch.render import render_jobs

        crash_on = os.environ.get(CRASH_ENV)
        if crash_on and any(job.rel.endswith(crash_on) for job in jobs):
            os._exit(1)  # the test hook: die like a segfault in the renderer would
        return list(render_jobs(jobs, self.synth, self.settings, batch_size=batch_size, force=force,
                                worker=self.tag))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The driver


def render_on_ray(jobs: list[Job], options: BatchOptions, progress: BatchProgress) -> Iterator[Result]:
    """Render `jobs` on the Ray cluster `options.ray` names ("local", "auto" or HOST:PORT); yield each job's
    Result as it finishes. Disconnects (and stops a cluster it started) when done, stopped or failed.

    A missing Ray fails at once, on the call; the cluster is joined when the first Result is asked for."""
    return _render(_import_ray(), jobs, options, progress)


def _render(ray, jobs: list[Job], options: BatchOptions, progress: BatchProgress) -> Iterator[Result]:
    saved = {name: os.environ.get(name) for name in _RAY_ENV}
    try:
        _connect(ray, options.ray or "auto")
        yield from _Driver(ray, jobs, options, progress).run()
    finally:
        with contextlib.suppress(Exception):  # never hide the error that got us here
            ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SpectrosynthError("--ray needs Ray: pip install 'spectrosynth[ray]'") from None
    return ray


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _connect(ray, address: str) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # off unless the user turned it on
    # The driver draws the progress: workers' output stays in Ray's log files, and Ray's notices are quiet.
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    given = os.environ.get("RAY_ADDRESS") if address == "auto" else address
    if given and given not in ("auto", "local"):
        problem = _unreachable(given)
        if problem:  # Ray itself would retry for ever, printing warnings
            raise SpectrosynthError(
                f"--ray {address}: no Ray cluster answers at {given} ({problem}); give the address "
                "`ray start --head` printed, or use --ray local"
            )
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)  # "auto" honours RAY_ADDRESS
    except ConnectionError as e:
        if address == "auto":
            where = os.environ.get("RAY_ADDRESS")
            found = f"none at RAY_ADDRESS={where}" if where else "no running one was found"
            raise SpectrosynthError(
                f"--ray auto joins a running Ray cluster, but {found}; start one with `ray start --head` "
                "or use --ray local"
            ) from None
        raise SpectrosynthError(
            f"--ray {address}: cannot join the Ray cluster there ({_first_line(e)}); check the address "
            "`ray start --head` printed and, if the cluster uses token authentication, that its token is "
            "in RAY_AUTH_TOKEN or ~/.ray/auth_token here"
        ) from None
    except (ValueError, RuntimeError) as e:  # a malformed address, Ray or Python versions that differ
        raise SpectrosynthError(f"--ray {address}: {_first_line(e)}") from None


def _unreachable(address: str) -> str | None:
    """Why nothing listens at `address` (HOST:PORT or ray://HOST:PORT), or None (a malformed address too:
    Ray says what is wrong with it)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None


@dataclass
class _Shape:
    """How many workers, and what each reserves."""

    count: int
    cpus: float
    gpus: float
    threads: int  # torch threads in each worker (0: leave as is)

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.count} workers of {self.cpus:g} CPU{gpus}"


def _share(per_node: list[float], count: int, most: float) -> float:
    """The largest whole amount (at most `most`) of which `count` fit on these nodes, else the fraction
    1/k that lets them share: a cluster total divided by `count` can fit on no node at all."""
    top = int(min(most, max(per_node, default=0)))
    for amount in range(top, 0, -1):
        if sum(int(n // amount) for n in per_node) >= count:
            return float(amount)
    for k in range(2, 10_000):
        if sum(int(n * k + 1e-9) for n in per_node) >= count:
            return math.floor(10_000 / k) / 10_000  # Ray keeps 4 decimals; rounding up would not fit
    return 0.0001


def _shape(nodes: list[dict[str, Any]], options: BatchOptions) -> _Shape:
    """One worker per GPU when the cluster has GPUs (unless --device cpu), else one per 2 CPUs; --workers
    overrides the count, and each worker reserves its share of CPUs (and uses that many threads)."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    gpu_nodes = [r for r in alive if r.get("GPU", 0) > 0]
    gpus = sum(r["GPU"] for r in gpu_nodes)
    if options.device.startswith("cuda") and not gpus:
        raise SpectrosynthError(
            f"--device {options.device}, but the Ray cluster has no GPUs; use --device cpu"
        )
    if gpus >= 1 and options.device != "cpu":
        count = options.workers or int(gpus)
        share = _share([r["GPU"] for r in gpu_nodes], count, 1.0)
        cpus = min(1.0, _share([r.get("CPU", 0) for r in gpu_nodes], count, 1.0))
        return _Shape(count, cpus, share, 0)
    total = int(sum(r.get("CPU", 0) for r in alive))
    count = options.workers or max(1, total // 2)
    cpus = _share([r.get("CPU", 0) for r in alive], count, math.inf)
    return _Shape(count, cpus, 0.0, max(1, int(cpus)))


@dataclass(eq=False)
class _Worker:
    actor: Any
    ready: bool = False
    tag: str = ""
    jobs: list[Job] = field(default_factory=list)  # the songs it is rendering


class _Driver:
    def __init__(self, ray, jobs: list[Job], options: BatchOptions, progress: BatchProgress):
        self.ray, self.options, self.progress = ray, options, progress
        self.queue: deque[Job] = deque(jobs)
        self.workers: list[_Worker] = []
        self.calls: dict[Any, _Worker] = {}  # every call in flight: a worker's `ready`, or its `render`
        self.lost_at_start = 0  # workers that died before they were ready
        self.shape = _shape(ray.nodes(), options)
        self.alive = -1
        self.began = time.monotonic()
        self.waiting_noted = False
        model = Path(options.settings.model).expanduser()
        # A model folder given relative to here means the same folder to a worker started elsewhere.
        self.model = str(model.absolute()) if model.exists() else options.settings.model
        # Songs per pass on a worker, and songs per call: twice that, so a worker's batch stays full while
        # its call lasts (continuous batching refills it from the call's songs).
        self.batch_size = options.batch_size or (8 if self.shape.gpus else 1)
        self.group = 1 if self.batch_size == 1 else 2 * self.batch_size
        self.device = options.device
        if self.shape.gpus and self.device.startswith("cuda"):
            self.device = "cuda"  # Ray gives each worker its GPU as cuda:0 (CUDA_VISIBLE_DEVICES)
        env = {CRASH_ENV: os.environ[CRASH_ENV]} if os.environ.get(CRASH_ENV) else {}
        self.actor_class = ray.remote(Renderer).options(
            num_cpus=self.shape.cpus, num_gpus=self.shape.gpus, max_restarts=0, max_task_retries=0,
            **({"runtime_env": {"env_vars": env}} if env else {}),
        )  # fmt: skip

    def run(self) -> Iterator[Result]:
        self.progress.note(f"Ray: {self.shape.describe()} for {len(self.queue)} files")
        for _ in range(self.shape.count):
            self._start()
        self._report()
        while self.queue or any(w.jobs for w in self.workers):
            self._feed()
            done, _ = self.ray.wait(list(self.calls), num_returns=1, timeout=WAIT_SECONDS)
            if not done:
                self._check_placement()
                continue
            call = done[0]
            worker = self.calls.pop(call)
            if not worker.jobs:
                self._handshake(worker, call)
            else:
                yield from self._finished(worker, call)

    # workers

    def _start(self) -> None:
        actor = self.actor_class.remote(str(self.options.out_dir.absolute()), self.options.settings,
                                        self.model, self.device, self.shape.threads)  # fmt: skip
        worker = _Worker(actor)
        self.workers.append(worker)
        self.calls[actor.ready.remote()] = worker

    def _handshake(self, worker: _Worker, call) -> None:
        try:
            info = self.ray.get(call)
        except self._deaths():
            self._lost(worker, started=False)
            return
        if info["error"]:
            raise SpectrosynthError(info["error"])  # the model or the options: every worker would fail
        worker.ready, worker.tag = True, info["tag"]
        self._report()

    def _lost(self, worker: _Worker, started: bool) -> None:
        """A worker died: replace it (unless workers keep dying before they load the model)."""
        self.workers.remove(worker)
        with contextlib.suppress(Exception):
            self.ray.kill(worker.actor)
        if not started:
            self.lost_at_start += 1
            if self.lost_at_start > 2 * self.shape.count + 1:
                raise SpectrosynthError(
                    f"Ray workers keep dying before they are ready ({self.lost_at_start} so far); is "
                    "spectrosynth installed, the same version, on every node? Their logs are in the Ray "
                    "session folder (/tmp/ray/session_latest/logs on each node)"
                )
        self._start()
        self._report()

    def _report(self) -> None:
        alive = sum(w.ready for w in self.workers)
        if alive != self.alive:
            self.alive = alive
            self.progress.workers(alive, self.shape.count)

    def _check_placement(self) -> None:
        waited = time.monotonic() - self.began
        if self.alive == 0 and not self.waiting_noted and waited > PLACEMENT_NOTE_SECONDS:
            self.waiting_noted = True
            self.progress.note(
                f"Ray: no worker has started after {waited:.0f} s; the cluster may lack room for "
                f"{self.shape.describe()} ({self.ray.cluster_resources()})"
            )

    def _deaths(self) -> tuple[type[BaseException], ...]:
        errors = self.ray.exceptions
        return (errors.RayActorError, errors.WorkerCrashedError, errors.LocalRayletDiedError)

    # songs

    def _feed(self) -> None:
        # One call per worker at a time. A second one queued behind it would save only a round trip (
        # milliseconds against minutes), and would make a death ambiguous: a worker that dies just after
        # finishing a call may never send its results, and then which songs killed it?
        for worker in self.workers:
            if worker.ready and not worker.jobs and self.queue:
                worker.jobs = [self.queue.popleft()]
                while len(worker.jobs) < self.group and self.queue and worker.jobs[0].attempt == 1:
                    if self.queue[0].attempt > 1:  # a song tried again goes alone
                        break
                    worker.jobs.append(self.queue.popleft())
                # A song tried again may have been written by the worker that died: replace it.
                force = self.options.force or worker.jobs[0].attempt > 1
                portable = [_portable(job) for job in worker.jobs]
                self.calls[worker.actor.render.remote(portable, force, self.batch_size)] = worker

    def _finished(self, worker: _Worker, call) -> Iterator[Result]:
        jobs, worker.jobs = worker.jobs, []
        try:
            results = self.ray.get(call)
        except self._deaths():
            yield from self._died(worker, jobs)
            return
        except self.ray.exceptions.RayTaskError as e:  # not about one file: stop, as a plain run would
            raise self._stopped(e, jobs, worker) from None
        by_rel = {job.rel: job for job in jobs}
        for result in results:
            yield replace(result, job=by_rel[result.job.rel])  # the driver's own job: its paths, its attempt

    def _died(self, worker: _Worker, jobs: list[Job]) -> Iterator[Result]:
        """The worker died while rendering `jobs`: charge each an attempt, replace the worker, and queue
        them again, each alone, ahead of the others."""
        self._lost(worker, started=True)
        for job in reversed(jobs):
            if job.attempt >= self.options.max_attempts:
                error = (f"{job.rel}: its Ray worker died while rendering it, in all {job.attempt} attempts "
                         "(--max-attempts); the file may crash the renderer")  # fmt: skip
                yield Result(job, "failed", error, "WorkerDied", worker=worker.tag)
                continue
            job.attempt += 1
            self.progress.note(f"{job.rel}: its Ray worker died; trying again (attempt {job.attempt} of "
                               f"{self.options.max_attempts})")  # fmt: skip
            self.queue.appendleft(job)  # next in line, while the worker that died is replaced

    def _stopped(self, e: BaseException, jobs: list[Job], worker: _Worker) -> SpectrosynthError:
        cause = getattr(e, "cause", None) or e
        message = str(cause) if isinstance(cause, SpectrosynthError) else f"{type(cause).__name__}: {cause}"
        message = _first_line(Exception(message))
        if not any(job.rel in message for job in jobs):
            message = f"{', '.join(job.rel for job in jobs)}: {message}"
        return SpectrosynthError(f"{message} (on Ray worker {worker.tag})")


def _portable(job: Job) -> Job:
    """The job as a worker on another machine (or in another folder) sees it: absolute paths."""
    mel = job.mel_target.absolute() if job.mel_target is not None else None
    return replace(job, source=job.source.absolute(), target=job.target.absolute(), mel_target=mel)
