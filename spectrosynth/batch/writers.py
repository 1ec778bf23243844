"""Who is writing into an output folder, so that what a dead writer left behind can be cleaned up safely.

Every process that renders into a batch's output folder (a plain run, a shard, a Ray worker) is a *writer*
with a unique tag, `w-<host>-<pid>-<random>`. While it runs it holds an exclusive lock (flock) on
`OUT/.spectrosynth/writers/<tag>.lock`, and every temporary file it creates carries its tag
(`.song.wav.<tag>.<random>.part`). The operating system releases the lock when the process ends, however it
ends (SIGKILL and power loss included). So a temporary whose writer's lock can be taken belongs to a writer
that is gone, and can be removed, while the temporaries of writers still running, on this machine or another
sharing the folder, are left alone. (flock works across machines on NFSv4 and on Linux NFS clients, which
map it to POSIX byte-range locks.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
from pathlib import Path

from spectrosynth import audio
from spectrosynth.batch.jobs import STATE_DIR

WRITERS_DIR = "writers"
_PART = re.compile(r"^\..+\.(w-[A-Za-z0-9_-]+)\.[0-9a-f]{8}\.part$")


def new_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
    return f"w-{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Writer:
    """This process as a writer into `out_dir`: holds its lock and tags its temporaries while in use.

    with Writer(out_dir) as writer:
        ...  # SongOutput / AudioWriter temporaries are named with writer.tag
    """

    def __init__(self, out_dir: Path, tag: str | None = None):
        self.out_dir, self.tag = Path(out_dir), tag or new_tag()
        self.lock_path = self.out_dir / STATE_DIR / WRITERS_DIR / f"{self.tag}.lock"
        self._fd: int | None = None
        self._previous_tag: str | None = None

    def __enter__(self) -> Writer:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.write(self._fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self._previous_tag, audio.PART_TAG = audio.PART_TAG, self.tag
        return self

    def __exit__(self, *exc) -> None:
        audio.PART_TAG = self._previous_tag
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.remove(self.lock_path)
            os.close(self._fd)  # releases the lock
            self._fd = None


def writer_alive(lock_path: Path) -> bool:
    """Whether the writer of this lock file still runs: its lock cannot be taken."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if it was taken
    return False


def sweep_stale(out_dir: Path) -> list[Path]:
    """Remove the temporaries of writers that are gone (and their lock files); returns what was removed.

    Temporaries without a writer tag (from `spectrosynth render`) and those of writers still running are
    left alone.
    """
    out_dir = Path(out_dir)
    writers = out_dir / STATE_DIR / WRITERS_DIR
    alive: dict[str, bool] = {}
    removed = []
    for folder, dirs, files in os.walk(out_dir):
        if Path(folder) == out_dir:
            dirs[:] = [d for d in dirs if d != STATE_DIR]
        for name in files:
            match = _PART.match(name)
            if not match:
                continue
            tag = match.group(1)
            if tag not in alive:
                alive[tag] = writer_alive(writers / f"{tag}.lock")
            if not alive[tag]:
                path = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    if writers.is_dir():
        for lock in writers.glob("*.lock"):
            if not writer_alive(lock):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
    return removed
