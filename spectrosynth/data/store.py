"""The on-disk training dataset: Apache Parquet shards, one row per song.

A dataset folder (what `spectrosynth dataset` writes and `spectrosynth train` reads)::

    DATA_DIR/
      dataset.json                 format version and the settings the songs were made with
      shards/part-XXXXXXXX.parquet one or more songs each, one Parquet row group per song

Parquet because it is made for this: columnar and compressed, readable by pyarrow, pandas, polars, DuckDB
and Hugging Face `datasets` (`load_dataset("parquet", data_files="DATA_DIR/shards/*.parquet")`); a reader
streams it a row group (a song) at a time; and a dataset grows by new shard files, never by rewriting old
ones. A shard is written under a hidden temporary name and renamed when complete, so a reader never sees
half a shard, and several processes (`--jobs`, or `--shard I/N` on a cluster) can add shards at once.

Columns of a row (one song):

| column | type | what |
|---|---|---|
| id | string | the pair's path relative to PAIRS_DIR, without extension (`waltzes/waltz1`) |
| split | string | `train`, or `validation` for the songs `--holdout` set aside |
| midi, audio | string | the source files, relative to PAIRS_DIR (audio: `soundfont:NAME.sf2` when rendered) |
| duration | float64 | seconds to the end of the last note (sustain applied): the token grid's length |
| audio_seconds | float64 | length of the audio at 16 kHz |
| gain_db | float32 | gain applied to the audio before its mel (<= 0: loud files are attenuated) |
| num_frames | int32 | mel frames: samples // 320 + 1 (the original's framing of a whole file) |
| mel | list<fixed_size_list<float32, 128>> | the whole file's natural-log mel, (num_frames, 128), unscaled |
| notes | list<struct> | the notes the model hears: pitch, velocity, start, end (s), program, is_drum |

The mel is `spectrosynth.features.log_mel_spectrogram` of the whole file, padded with 1-320 zeros to whole
frames; frames after the end are silence (ln 1e-5). Training slices any 256 frames of it (training-spec.md
§1: a chunk's mel equals the whole-file mel's slice). The notes are stored after the sustain pedal and the
instrument options, mapped to the model's instrument classes: exactly what the tokenizer reads, so any chunk's
tokens can be made from them (`spectrosynth.tokens.NoteEvents`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectrosynth.constants import NUM_MEL_BINS
from spectrosynth.errors import SpectrosynthError
from spectrosynth.midi import Note

FORMAT = "spectrosynth-dataset"
FORMAT_VERSION = 1
SETTINGS_FILE = "dataset.json"
SHARDS = "shards"
SPLITS = ("train", "validation")
_INSTALL = "pip install 'spectrosynth[train]'"
_MEL_VALUES = "mel.list.element.list.element"  # the Parquet path of the mel's float values


class DatasetError(SpectrosynthError):
    """A dataset folder that cannot be read or added to."""


def pyarrow():
    """pyarrow and pyarrow.parquet, or a one-line error saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SpectrosynthError(f"training datasets need pyarrow; install it with {_INSTALL}") from None
    return pa, pq


def schema():
    pa, _ = pyarrow()
    note = pa.struct(
        [
            ("pitch", pa.int8()),
            ("velocity", pa.int8()),
            ("start", pa.float64()),
            ("end", pa.float64()),
            ("program", pa.int8()),
            ("is_drum", pa.bool_()),
        ]
    )
    return pa.schema(
        [
            ("id", pa.string()),
            ("split", pa.string()),
            ("midi", pa.string()),
            ("audio", pa.string()),
            ("duration", pa.float64()),
            ("audio_seconds", pa.float64()),
            ("gain_db", pa.float32()),
            ("num_frames", pa.int32()),
            ("mel", pa.list_(pa.list_(pa.float32(), NUM_MEL_BINS))),
            ("notes", pa.list_(note)),
        ],
        metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)},
    )


@dataclass
class Song:
    """One song of a dataset, loaded."""

    id: str
    split: str
    duration: float  # seconds to the last note's end: the tokenizer's grid
    mel: np.ndarray  # (num_frames, 128) float32 natural-log mel
    notes: list[Note]  # as the model hears them (sustain applied, model classes)
    midi: str = ""
    audio: str = ""
    gain_db: float = 0.0

    @property
    def num_frames(self) -> int:
        return self.mel.shape[0]


def song_row(song: Song, audio_seconds: float) -> dict[str, Any]:
    """A Song as a row of the schema (pyarrow builds the nested columns from plain lists)."""
    return {
        "id": song.id,
        "split": song.split,
        "midi": song.midi,
        "audio": song.audio,
        "duration": float(song.duration),
        "audio_seconds": float(audio_seconds),
        "gain_db": float(song.gain_db),
        "num_frames": int(song.num_frames),
        "mel": np.ascontiguousarray(song.mel, dtype=np.float32),
        "notes": [
            {
                "pitch": n.pitch,
                "velocity": n.velocity,
                "start": n.start,
                "end": n.end,
                "program": n.program,
                "is_drum": n.is_drum,
            }
            for n in song.notes
        ],
    }


def _row_table(row: dict[str, Any]):
    """One row as a pyarrow Table; the mel goes in as a flat float32 buffer (no per-value Python objects)."""
    pa, _ = pyarrow()
    sch = schema()
    mel = row["mel"]
    frames = pa.FixedSizeListArray.from_arrays(pa.array(mel.reshape(-1), pa.float32()), NUM_MEL_BINS)
    mel_column = pa.ListArray.from_arrays(pa.array([0, len(mel)], pa.int32()), frames)
    columns = []
    for f in sch:
        if f.name == "mel":
            columns.append(mel_column)
        else:
            columns.append(pa.array([row[f.name]], f.type))
    return pa.Table.from_arrays(columns, schema=sch)


class ShardWriter:
    """Writes songs into new shard files, each complete before it appears (hidden temporary, then rename).

    `add` appends a song as a row group of the current shard; a shard is closed after `songs_per_shard` songs,
    and by `close` (on success or Ctrl-C alike, so finished songs are kept). An error writing (a full disk)
    removes the temporary and raises DatasetError: complete shards already written stay as they are.
    """

    def __init__(self, folder: str | os.PathLike[str], songs_per_shard: int = 32):
        self.folder = Path(folder) / SHARDS
        self.folder.mkdir(parents=True, exist_ok=True)
        self.songs_per_shard = songs_per_shard
        self.written: list[Path] = []
        self._writer = None
        self._part: Path | None = None
        self._count = 0

    def add(self, row: dict[str, Any]) -> None:
        _, pq = pyarrow()
        try:
            if self._writer is None:
                self._part = self.folder / f".part-{secrets.token_hex(4)}.parquet.tmp"
                # Floats split by byte before zstd (the mel's sign and exponent bytes compress well): a mel
                # takes about half its raw size. No dictionaries: they do not pay for one row per group.
                self._writer = pq.ParquetWriter(
                    self._part,
                    schema(),
                    compression="zstd",
                    use_dictionary=False,
                    column_encoding={_MEL_VALUES: "BYTE_STREAM_SPLIT"},
                )
            self._writer.write_table(_row_table(row))
        except OSError as e:
            self._discard()
            raise DatasetError(
                f"cannot write the dataset shard in {self.folder} ({e.strerror or e}); free disk space or "
                "fix the folder's permissions, then run the same command again to go on"
            ) from e
        self._count += 1
        if self._count >= self.songs_per_shard:
            self._finish()

    def _finish(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
            with open(self._part, "rb") as f:
                os.fsync(f.fileno())
            final = self.folder / f"part-{self._part.name[6:14]}.parquet"
            os.replace(self._part, final)
        except OSError as e:
            self._discard()
            raise DatasetError(
                f"cannot finish the dataset shard in {self.folder} ({e.strerror or e}); free disk space, "
                "then run the same command again to go on"
            ) from e
        self.written.append(final)
        self._writer, self._part, self._count = None, None, 0

    def _discard(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
        if self._part is not None:
            self._part.unlink(missing_ok=True)
        self._writer, self._part, self._count = None, None, 0

    def close(self) -> None:
        self._finish()


def read_settings(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """dataset.json's settings, or None when the folder has none yet."""
    path = Path(folder) / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is damaged ({e}); restore it or build the dataset again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{path} is not a spectrosynth dataset description; give a dataset folder")
    if data.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} is format version {data.get('format_version')}, this spectrosynth reads version "
            f"{FORMAT_VERSION}; build the dataset again with this version"
        )
    return data.get("settings", {})


def write_settings(folder: str | os.PathLike[str], settings: dict[str, Any]) -> None:
    """Write dataset.json atomically."""
    path = Path(folder) / SETTINGS_FILE
    part = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings}
    try:
        part.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(part, path)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DatasetError(f"cannot write {path} ({e.strerror or e}); check the folder") from e


def shard_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The complete shards of a dataset, in name order."""
    return sorted((Path(folder) / SHARDS).glob("part-*.parquet"))


def remove_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete shard temporaries left by a process that died (they are never read). Returns how many."""
    removed = 0
    for part in (Path(folder) / SHARDS).glob(".part-*.parquet.tmp"):
        part.unlink(missing_ok=True)
        removed += 1
    return removed


@dataclass(frozen=True)
class SongRef:
    """Where a song is: its shard and row group, and what the index needs without loading it."""

    id: str
    split: str
    num_frames: int
    shard: Path
    row_group: int


def _damaged(path: Path, e: BaseException) -> DatasetError:
    reason = " ".join(str(e).split())[:160] or type(e).__name__
    return DatasetError(
        f"dataset shard {path} is damaged ({reason}); delete it and run `spectrosynth dataset` again to "
        "rebuild its songs"
    )


class DatasetReader:
    """A dataset folder's song index, with songs loaded on demand and kept in memory up to `cache_bytes`.

    Opening reads only the shards' footers and three small columns (so a damaged shard is found at once);
    a song's mel and notes are read (one row group) the first time it is needed.
    """

    def __init__(self, folder: str | os.PathLike[str], cache_bytes: int = 4 << 30):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"no dataset folder {self.folder}; make one with `spectrosynth dataset`")
        self.settings = read_settings(self.folder)
        files = shard_files(self.folder)
        if self.settings is None or not files:
            raise DatasetError(
                f"{self.folder} holds no songs (no {SETTINGS_FILE} or no shards); make a dataset with "
                "`spectrosynth dataset PAIRS_DIR DATA_DIR`"
            )
        _, pq = pyarrow()
        self.songs: list[SongRef] = []
        seen: set[str] = set()
        for path in files:
            try:
                f = pq.ParquetFile(path)
                index = f.read(columns=["id", "split", "num_frames"]).to_pydict()
                rows_per_group = [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)]
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise _damaged(path, e) from e
            if rows_per_group and set(rows_per_group) != {1}:
                raise _damaged(path, ValueError("a row group holds more than one song"))
            for group, (sid, split, frames) in enumerate(
                zip(index["id"], index["split"], index["num_frames"], strict=True)
            ):
                if sid in seen:  # the same pair added twice by concurrent runs: the first copy counts
                    continue
                seen.add(sid)
                self.songs.append(SongRef(sid, split, frames, path, group))
        self.songs.sort(key=lambda s: s.id)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, Song] = OrderedDict()
        self._cached_bytes = 0

    def split(self, name: str) -> list[SongRef]:
        return [s for s in self.songs if s.split == name]

    def load(self, ref: SongRef) -> Song:
        """A song's mel and notes (cached; least recently used songs are dropped past the budget)."""
        song = self._cache.get(ref.id)
        if song is not None:
            self._cache.move_to_end(ref.id)
            return song
        song = self._read(ref)
        size = song.mel.nbytes
        self._cache[ref.id] = song
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.mel.nbytes
        return song

    def _read(self, ref: SongRef) -> Song:
        _, pq = pyarrow()
        try:
            table = pq.ParquetFile(ref.shard).read_row_group(ref.row_group)
            mel_list = table.column("mel").combine_chunks()
            values = mel_list.flatten().flatten().to_numpy(zero_copy_only=False)
            mel = np.asarray(values, dtype=np.float32).reshape(-1, NUM_MEL_BINS)
            notes = [
                Note(
                    pitch=int(n["pitch"]),
                    velocity=int(n["velocity"]),
                    start=float(n["start"]),
                    end=float(n["end"]),
                    program=int(n["program"]),
                    track=0,
                    is_drum=bool(n["is_drum"]),
                )
                for n in table.column("notes")[0].as_py()
            ]
            row = {
                name: table.column(name)[0].as_py()
                for name in ("id", "split", "duration", "midi", "audio", "gain_db", "num_frames")
            }
        except Exception as e:  # noqa: BLE001
            raise _damaged(ref.shard, e) from e
        if row["id"] != ref.id or mel.shape[0] != row["num_frames"]:
            raise _damaged(ref.shard, ValueError(f"song {ref.id} does not match the shard's index"))
        return Song(
            row["id"], row["split"], row["duration"], mel, notes, row["midi"], row["audio"], row["gain_db"]
        )
