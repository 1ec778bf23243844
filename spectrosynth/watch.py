"""`render --watch` and `play --watch`: each complete new version of a MIDI file, as it is saved.

`versions(path)` yields a `Version` (its bytes and its parsed Score) each time the file has been saved with
new content. It watches the file's folder with watchfiles (inotify on Linux, FSEvents on macOS,
ReadDirectoryChangesW on Windows), so that a program that saves by writing another file and renaming it
over the name (most DAWs and editors) is seen as well as one that rewrites it in place. A version is taken
only once it is whole:

* debounced: the file must have been quiet (no event) for `quiet_ms` (300 ms) before it is read;
* stable: its size, modification time and inode must be the same before and after reading it, and the
  bytes read as many as the size said; otherwise it is still being written, and read again after the
  next quiet interval;
* readable: a file that does not parse as MIDI right after a change (half written, a truncated track) is
  tried again every `quiet_ms` until it parses or it changes again, for up to `retry_s` (10 s); then one
  line says why, and the next save is waited for;
* new: bytes equal to the last version's (a save without a change, a touch) are not a new version.

A file that disappears (a program that deletes before it writes) is waited for. `stop` (a threading.Event)
ends the generator within about `quiet_ms`; Ctrl-C raises KeyboardInterrupt as usual.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spectrosynth.errors import SpectrosynthError
from spectrosynth.midi import Score, read_midi

QUIET_MS = 300  # of no file events before a change is read
RETRY_S = 10.0  # how long a file that does not parse after a change is tried again


@dataclass(frozen=True)
class Version:
    """One complete version of the watched file."""

    data: bytes
    score: Score


def read_version(path: Path, label: str) -> tuple[Version | None, str | None]:
    """The file as it is now, if it is whole: (version, None), or (None, why not)."""
    try:
        before = os.stat(path)
        data = path.read_bytes()
        after = os.stat(path)
    except FileNotFoundError:
        return None, f"{label} is not there (being replaced?)"
    except OSError as e:
        return None, f"{label} cannot be read ({e.strerror or e})"
    signature = (before.st_size, before.st_mtime_ns, before.st_ino)
    if signature != (after.st_size, after.st_mtime_ns, after.st_ino) or len(data) != after.st_size:
        return None, f"{label} is still being written"
    try:
        return Version(data, read_midi(data, name=label)), None
    except SpectrosynthError as e:
        return None, str(e)


def versions(
    path: str | os.PathLike[str],
    *,
    last: bytes | None = None,
    label: str | None = None,
    quiet_ms: int = QUIET_MS,
    retry_s: float = RETRY_S,
    stop: threading.Event | None = None,
    note: Callable[[str], None] | None = None,
) -> Iterator[Version]:
    """Each new complete version of the file at `path` (see the module docstring), from the next save on.

    last: the bytes of the version already rendered (a save that leaves them unchanged is not new); label:
    the file's name in messages; note(line): told when a changed file does not become readable within
    `retry_s`.
    """
    import watchfiles

    path = Path(path).absolute()
    label = label or path.name
    folder = path.parent
    if not folder.is_dir():
        raise SpectrosynthError(f"{folder} is not a folder; --watch needs the MIDI file's folder")

    def ours(change, changed: str) -> bool:
        return Path(changed).name == path.name

    pending_since: float | None = None  # when the change not yet taken was seen
    for changes in watchfiles.watch(
        folder, watch_filter=ours, debounce=max(quiet_ms * 10, 2000), step=quiet_ms, stop_event=stop,
        rust_timeout=quiet_ms, yield_on_timeout=True, recursive=False,
    ):  # fmt: skip
        # watchfiles yields changes once none came for quiet_ms; otherwise an empty set every quiet_ms
        if changes:
            pending_since = time.monotonic()
        elif pending_since is None:
            continue
        version, why = read_version(path, label)
        if version is None:  # tried again after the next quiet interval, or at the next change
            if time.monotonic() - pending_since > retry_s:
                if note is not None:
                    note(f"{why}; waiting for the next save")
                pending_since = None
            continue
        pending_since = None
        if version.data == last:
            continue
        last = version.data
        yield version
