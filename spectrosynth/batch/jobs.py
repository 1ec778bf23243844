"""What a batch renders: the settings every song shares, the songs (jobs), and how a collection is split.

A job is keyed by its input's path relative to the input folder, written with forward slashes
(`waltzes/waltzes2.mid`): the same on every machine that mounts the collection, whatever order it lists it
in. That key decides the output's path (the tree is mirrored), the shard a job belongs to and its lines in
the manifest.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from spectrosynth.constants import DEFAULT_VOCODER
from spectrosynth.errors import SpectrosynthError
from spectrosynth.outputs import OutputSettings

MIDI_SUFFIXES = (".mid", ".midi")
STATE_DIR = ".spectrosynth"  # under the output folder: manifest, run settings, writers' locks
#: RenderSettings fields added after the first release, with their defaults (see RenderSettings.to_dict).
LATER_FIELDS: dict[str, Any] = {"vocoder": DEFAULT_VOCODER, "guidance_interval": "full", "stems": False}
#: The same for OutputSettings, recorded under "output".
LATER_OUTPUT_FIELDS: dict[str, Any] = {"channels": 1, "loudness": None}


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides a batch's output bytes, and so whether a resumed run may reuse its files.

    The device and the batch size are not part of it: they change results only by floating-point rounding.
    """

    model: str
    revision: str | None
    dtype: str  # as asked for ("auto" included), not as resolved
    sampler: str
    steps: int
    guidance: float
    seed: int
    programs: tuple[str, ...] = ()
    tracks: tuple[str, ...] = ()
    mutes: tuple[str, ...] = ()
    no_drums: bool = False
    start: float = 0.0
    duration: float | None = None
    output: OutputSettings = field(default_factory=OutputSettings)
    save_mel: bool = False
    vocoder: str = DEFAULT_VOCODER  # constants.VOCODERS: "model" (melgan/model.onnx) or "griffin-lim"
    guidance_interval: str = "full"  # "LO,HI" in log-SNR, or "full" (spectrosynth.sampling.interval)
    stems: bool = False  # also a folder of per-track stems next to each song's audio (spectrosynth.stems)

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded in run.json and hashed for the digest. Fields added since the first
        release (LATER_FIELDS) are left out while they hold their default, so that a folder rendered before
        they existed keeps its digest and resumes."""
        data = asdict(self)
        for fields, where in ((LATER_FIELDS, data), (LATER_OUTPUT_FIELDS, data["output"])):
            for key, default in fields.items():
                if where[key] == default:
                    del where[key]
        return data

    @staticmethod
    def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
        """A recorded settings dict with the LATER_FIELDS it leaves out filled in, for comparing two."""
        output = {**LATER_OUTPUT_FIELDS, **data["output"]} if isinstance(data.get("output"), dict) else None
        return {**LATER_FIELDS, **data, **({"output": output} if output is not None else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderSettings:
        data = dict(data)
        data["output"] = OutputSettings(**data["output"])
        for key in ("programs", "tracks", "mutes"):
            data[key] = tuple(data[key])
        return cls(**data)

    @property
    def digest(self) -> str:
        """A short hash of the settings: the same settings give the same digest on every machine."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def remap(self):
        from spectrosynth.remap import Remap

        return Remap.from_options(self.programs, self.tracks, self.mutes, self.no_drums)


@dataclass
class Job:
    """One song to render."""

    rel: str  # the input's path relative to the input folder, with forward slashes: the manifest key
    source: Path  # the MIDI file
    target: Path  # the audio file
    mel_target: Path | None = None  # the spectrogram (.npy), with --save-mel
    attempt: int = 1

    @property
    def stems_target(self) -> Path:
        """The folder of its stems, with --stems: song.wav's are in song.stems/."""
        return self.target.with_suffix(".stems")


@dataclass
class Result:
    """What became of one attempt at a job."""

    job: Job
    status: str  # "ok", "failed" or "skipped"
    error: str | None = None
    error_type: str | None = None
    audio_seconds: float = 0.0
    render_seconds: float = 0.0
    segments: int = 0
    worker: str = ""
    notes: list[str] = field(default_factory=list)  # warnings and notices about the song
    loudness: float | None = None  # the output's integrated loudness (LUFS), with --loudness

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (1-based) -> (I, N); a one-line error for anything else."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SpectrosynthError(f"--shard {text!r} is not I/N, such as 3/16 (shard 3 of 16)") from None
    if not 1 <= index <= count:
        raise SpectrosynthError(
            f"--shard {text}: I must be from 1 to N ({count}); shards are numbered from 1"
        )
    return index, count


def shard_of(rel: str, count: int) -> int:
    """The 1-based shard of a job among `count`: from a checksum of its key alone, so every machine agrees
    whatever order it lists the files in, and each shard gets about 1/count of them."""
    return zlib.crc32(rel.encode("utf-8")) % count + 1


def find_midi_files(folder: Path) -> list[str]:
    """Every .mid/.midi file below `folder` (any letter case), as keys, in a stable order. Hidden files (such
    as the `._song.mid` files macOS leaves on shared drives) and hidden folders are skipped."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in MIDI_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def read_files_from(source: str, in_dir: Path) -> list[str]:
    """Keys from a list file (one path per line, relative to the input folder; '-' reads standard input).

    Blank lines and lines starting with '#' are ignored; an absolute path must lie inside the input folder.
    The files themselves are not checked here: a missing one fails as its job, not the whole batch.
    """
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as e:
        raise SpectrosynthError(f"--files-from {source}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpectrosynthError(
            f"--files-from {source}: not a UTF-8 text file with one path per line"
        ) from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line)
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(in_dir.resolve())
            except ValueError:
                raise SpectrosynthError(
                    f"--files-from {source}, line {number}: {line} is not inside {in_dir}; list paths "
                    "relative to the input folder"
                ) from None
        key = PurePosixPath(path.as_posix())
        if ".." in key.parts:
            raise SpectrosynthError(f"--files-from {source}, line {number}: {line} leaves the input folder")
        keys.append(str(key))
    return list(dict.fromkeys(keys))  # each once, in the list's order


@dataclass
class Plan:
    """The jobs of one run, and the inputs that cannot be rendered because another takes their output."""

    jobs: list[Job]
    clashes: list[Result]
    listed: int  # inputs listed before sharding


def plan(
    in_dir: Path,
    out_dir: Path,
    fmt: str,
    *,
    files_from: str | None = None,
    shard: tuple[int, int] | None = None,
    save_mel: bool = False,
) -> Plan:
    """The jobs for `in_dir` -> `out_dir`: found by walking `in_dir` (or read from `files_from`), kept if in
    `shard` (I, N), each mapped to its mirrored output. Two inputs that would write the same output (a.mid
    and a.midi) are a clash: the first keeps the output, the second is reported as failed."""
    keys = read_files_from(files_from, in_dir) if files_from is not None else find_midi_files(in_dir)
    listed = len(keys)
    if shard is not None:
        keys = [k for k in keys if shard_of(k, shard[1]) == shard[0]]
    jobs, clashes, claimed = [], [], {}
    for key in keys:
        target = (out_dir / key).with_suffix(f".{fmt}")
        job = Job(key, in_dir / key, target, target.with_suffix(".npy") if save_mel else None)
        if target in claimed:
            error = f"{key}: {claimed[target]} already renders to {target}; rename one of them"
            clashes.append(Result(job, "failed", error, "OutputError"))
            continue
        claimed[target] = key
        jobs.append(job)
    return Plan(jobs, clashes, listed)


def by_shard(keys: Iterable[str], count: int) -> dict[int, list[str]]:
    """Keys grouped by shard (for tests and for planning a job array)."""
    groups: dict[int, list[str]] = {i: [] for i in range(1, count + 1)}
    for key in keys:
        groups[shard_of(key, count)].append(key)
    return groups
