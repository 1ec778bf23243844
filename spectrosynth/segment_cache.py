"""Rendered segments kept for the next render of the same song, so that after an edit only what changed is
sampled again.

A render samples its 5.12 s segments one after the other, each conditioned on the previous segment's
spectrogram and drawing its noise from the song's generator. So segment k's spectrogram is decided by the
model, the precision and the device it computes on, the sampler's settings, the seed, the tokens of
segments 0..k, and nothing else. Each segment's entry is keyed by a chain:

    key_0 = sha256(identity, tokens_0)        key_k = sha256(key_(k-1), tokens_k)

where `identity` (`render_identity`) hashes the model files' fingerprint (`converted.model_fingerprint`:
each weights file's resolved path, size and modification time, each config's hash), the precision, the
device (CPU: its identity as `precision.cpu_identity` gives it, torch's threads and quantized engine;
CUDA: the GPU's name and compute capability; torch's version on both), the sampler, its steps, guidance,
guidance interval and options, and the generator's starting state (the seed). The context (segment k - 1's
spectrogram) and the generator's state before segment k are implied by key_(k-1). After an edit in
segment j, keys 0..j-1 are unchanged and their entries are reused; keys j.. are new, and sampled again.

An entry holds the segment's log-mel spectrogram (256 x 128 float32) and the generator's state after it
(`torch.Generator.get_state()`, 5056 bytes on the CPU), so that sampling can resume at segment j with
exactly the noise a full render draws: the result is the same bytes as a render without the cache. One file
per entry (about 133 KiB), `<root>/<2 hex>/<key hex>.seg`: a header (magic, format, the key, the sha256
of the payload, the spectrogram's shape, the state's length), then the spectrogram and the state. A file
whose header, key, size or checksum does not match is ignored (and replaced when the segment is sampled
again).

Several processes may share the folder without a lock: an entry is written to a temporary file in its
folder and renamed over its name (`os.replace`: a reader sees the whole old file or the whole new one),
readers check the checksum, and eviction tolerates files vanishing under it. The size is bounded: a file's
modification time is its last use (a hit touches it), and when the entries pass `max_bytes` the least
recently used are removed until they take 90 % of it. A cache that cannot be written costs only time:
`problem` says why, and the render goes on without keeping its segments.

The folder is $SPECTROSYNTH_CACHE/segments (default ~/.cache/spectrosynth/segments, beside converted/);
SPECTROSYNTH_CACHE=off turns it off with the rest of the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spectrosynth.constants import DEFAULT_CACHE_SIZE

if TYPE_CHECKING:
    import torch

FORMAT = "spectrosynth-segments/1"
FOLDER = "segments"
SUFFIX = ".seg"
MAGIC = b"SSSEG\x00\x01\n"
HEADER = struct.Struct("<8s32s32sIII")  # magic, key, sha256 of the payload, mel shape (2), state bytes
DEFAULT_SIZE = DEFAULT_CACHE_SIZE
LOW_WATER = 0.9  # eviction brings the entries down to this share of the bound
STALE_TEMPORARY_S = 3600.0  # a temporary older than this was left by a process that died: removed
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str | int) -> int:
    """`--cache-size`: bytes from `2G`, `500M`, `64K`, `1.5G` or a plain number of bytes (binary units:
    1K = 1024 bytes; a trailing B or iB is allowed); 0 turns the cache off. ValueError otherwise."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size must be 0 or more, not {text}")
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a size; use a number with K, M or G (500M, 2G), or 0 for none")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_size(size: int) -> str:
    """Bytes as `1.9 GiB`, `512.0 MiB`, `3.0 KiB`, `12 B`."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def cache_root() -> Path | None:
    """Where segments are kept: $SPECTROSYNTH_CACHE/segments, or None when the cache is turned off."""
    from spectrosynth.converted import cache_home

    home = cache_home()
    return None if home is None else home / FOLDER


# ------------------------------------------------------------------------------------------------------
# Keys


def device_identity(device: torch.device) -> dict[str, Any]:
    """What of the device decides a render's rounding: torch's version and, on a CPU, the CPU (its model and
    matrix features), the threads and the quantized engine; on CUDA, the GPU's name and compute capability
    and CUDA's version. A cache shared by different machines keeps each one's segments apart."""
    import torch

    identity: dict[str, Any] = {"type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        identity.update(name=props.name, capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    else:
        from spectrosynth.precision import cpu_identity

        identity.update(cpu=cpu_identity(), threads=torch.get_num_threads(),
                        quantized_engine=str(torch.backends.quantized.engine))  # fmt: skip
    return identity


def render_identity(
    synth: Any,
    *,
    sampler: str,
    steps: int,
    guidance: float,
    guidance_interval: Any,
    sampler_options: dict | None = None,
) -> bytes | None:
    """The hash of everything but the seed and the tokens that decides a segment's spectrogram (see the
    module docstring), or None for a Synthesizer that does not know its model files (one not made by
    `from_pretrained`): its segments are not kept."""
    fingerprint = getattr(synth, "model_fingerprint", None)
    if fingerprint is None:
        return None
    from spectrosynth.sampling import as_interval

    interval = as_interval(guidance_interval)
    record = {
        "format": FORMAT,
        "model": fingerprint,
        "precision": synth.precision,
        "device": device_identity(synth.device),
        "sampler": sampler,
        "steps": int(steps),
        "guidance": repr(float(guidance)),
        "guidance_interval": [repr(float(interval.low)), repr(float(interval.high))],
        "sampler_options": sampler_options or {},
    }
    text = json.dumps(record, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).digest()


def chain_keys(identity: bytes, generator_state: bytes, segments: Sequence[Sequence[int]]) -> list[bytes]:
    """Each segment's key: key_k = sha256(key_(k-1), tokens_k), key_(-1) = sha256(identity, the generator's
    starting state)."""
    previous = hashlib.sha256(identity + hashlib.sha256(generator_state).digest()).digest()
    keys = []
    for tokens in segments:
        ids = np.asarray(tokens, dtype="<i4").tobytes()
        previous = hashlib.sha256(previous + struct.pack("<I", len(tokens)) + ids).digest()
        keys.append(previous)
    return keys


# ------------------------------------------------------------------------------------------------------
# What a render took from the cache


@dataclass
class CacheUse:
    """Which segments of each part a render took from the cache (True) and which it sampled (False)."""

    reused: list[list[bool]] = field(default_factory=list)  # [part][segment]

    @property
    def total(self) -> int:
        return sum(len(part) for part in self.reused)

    @property
    def hits(self) -> int:
        return sum(sum(part) for part in self.reused)

    def sampled(self) -> list[int]:
        """The segments (0-based) sampled in any part."""
        return sorted({k for part in self.reused for k, hit in enumerate(part) if not hit})

    def summary(self) -> str:
        """`41 of 44 segments from the cache` (`... (4 parts)` when a render had several)."""
        parts = f" ({len(self.reused)} parts)" if len(self.reused) > 1 else ""
        return f"{self.hits} of {self.total} segments{parts} from the cache"


# ------------------------------------------------------------------------------------------------------
# The cache


class SegmentCache:
    """Rendered segments on disk, least recently used first out (see the module docstring).

    `get(key)` gives (log-mel (256, 128) float32, generator state bytes) or None; `put(key, mel, state)`
    keeps one. Errors never propagate: a damaged entry is a miss, and an unwritable folder sets `problem`
    (the first reason) and makes `put` a no-op that returns False.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int | str = DEFAULT_SIZE):
        self.root = Path(root)
        self.max_bytes = parse_size(max_bytes)
        self.problem: str | None = None
        self.noted = False  # for callers: whether `problem` has been told
        self._total: int | None = None  # bytes of the entries, as last counted plus what this process added

    @classmethod
    def default(cls, max_bytes: int | str = DEFAULT_SIZE) -> SegmentCache | None:
        """The user's cache ($SPECTROSYNTH_CACHE/segments) bounded to `max_bytes`, or None when it is
        turned off (SPECTROSYNTH_CACHE=off, or a size of 0)."""
        root = cache_root()
        size = parse_size(max_bytes)
        return None if root is None or size == 0 else cls(root, size)

    def path(self, key: bytes) -> Path:
        name = key.hex()
        return self.root / name[:2] / f"{name}{SUFFIX}"

    # -- reading -----------------------------------------------------------------------------------------

    def get(self, key: bytes) -> tuple[np.ndarray, bytes] | None:
        """The entry for `key`, checked whole, or None (absent, damaged, or unreadable). A hit marks the
        entry as just used."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        entry = _decode(data, key)
        if entry is not None:
            with contextlib.suppress(OSError):  # a read-only cache still serves; the order is then its own
                os.utime(path)
        return entry

    # -- writing -----------------------------------------------------------------------------------------

    def put(self, key: bytes, mel: np.ndarray, state: bytes | np.ndarray | Any) -> bool:
        """Keep a segment's log-mel (256, 128) and the generator state after it; False where the cache
        cannot be written (`problem` says why). The least recently used entries go when the bound is
        passed."""
        if self.problem is not None:
            return False
        data = _encode(key, mel, _state_bytes(state))
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, part = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(part, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(part)
                raise
        except OSError as e:
            self.problem = f"{self.root} cannot be written ({e.strerror or e})"
            return False
        if self._total is None:
            self._total = self.usage()[1]
        else:
            self._total += len(data)
        if self._total > self.max_bytes:
            self.trim()
        return True

    # -- size --------------------------------------------------------------------------------------------

    def _scan(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) of every entry, and of temporaries left by processes that died."""
        found = []
        now = time.time()
        try:
            folders = [e for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return found
        for folder in folders:
            try:
                entries = list(os.scandir(folder.path))
            except OSError:
                continue
            for entry in entries:
                try:
                    stat = entry.stat(follow_symlinks=False)
                except OSError:  # removed meanwhile by another process
                    continue
                if entry.name.endswith(SUFFIX):
                    found.append((stat.st_mtime, stat.st_size, Path(entry.path)))
                elif entry.name.endswith(".tmp") and now - stat.st_mtime > STALE_TEMPORARY_S:
                    found.append((0.0, stat.st_size, Path(entry.path)))  # first out
        return found

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) in the cache now."""
        found = self._scan()
        return sum(1 for *_, p in found if p.suffix == SUFFIX), sum(size for _, size, _ in found)

    def trim(self, max_bytes: int | None = None) -> int:
        """Remove the least recently used entries until they take at most LOW_WATER of `max_bytes` (the
        bound by default), when they take more than it; returns the bytes removed. Files another process
        removes meanwhile are simply gone. A scan of the folder: about 0.1 s per 10 000 entries."""
        bound = self.max_bytes if max_bytes is None else max_bytes
        found = sorted(self._scan(), key=lambda item: item[0])
        total = sum(size for _, size, _ in found)
        removed = 0
        if total > bound:
            target = int(bound * LOW_WATER)
            for _, size, path in found:
                if total - removed <= target:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
                removed += size
        self._total = total - removed
        return removed

    def settle(self) -> None:
        """Count the entries afresh and trim them to the bound if they pass it: a render calls it once at
        its end. A process's running count misses what others write meanwhile; since every process
        settles after its last write, the last to settle sees every write, and the bound holds when the
        writers are done."""
        if self.problem is None and self._total is not None:
            self.trim()

    def clear(self) -> None:
        """Remove every entry."""
        self.trim(0)


def _state_bytes(state: Any) -> bytes:
    if isinstance(state, bytes):
        return state
    if hasattr(state, "numpy"):  # a torch ByteTensor, as Generator.get_state() gives it
        return state.numpy().tobytes()
    return np.asarray(state, np.uint8).tobytes()


def _encode(key: bytes, mel: np.ndarray, state: bytes) -> bytes:
    mel = np.ascontiguousarray(mel, dtype="<f4")
    if mel.ndim != 2:
        raise ValueError(f"a segment's spectrogram is (frames, bins), not {mel.shape}")
    payload = mel.tobytes() + state
    digest = hashlib.sha256(payload).digest()
    return HEADER.pack(MAGIC, key, digest, mel.shape[0], mel.shape[1], len(state)) + payload


def _decode(data: bytes, key: bytes) -> tuple[np.ndarray, bytes] | None:
    if len(data) < HEADER.size:
        return None
    magic, stored_key, digest, rows, columns, state_length = HEADER.unpack_from(data)
    mel_bytes = rows * columns * 4
    if magic != MAGIC or stored_key != key or len(data) != HEADER.size + mel_bytes + state_length:
        return None
    payload = data[HEADER.size :]
    if hashlib.sha256(payload).digest() != digest:
        return None
    mel = np.frombuffer(payload[:mel_bytes], dtype="<f4").reshape(rows, columns).astype(np.float32)
    return mel, payload[mel_bytes:]
