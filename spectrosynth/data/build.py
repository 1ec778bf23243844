"""`spectrosynth dataset`: (MIDI, audio) pairs -> a training dataset (spectrosynth.data.store).

Each pair is read, checked and turned into one row: the MIDI's notes as the model hears them (the same
reading, sustain, instrument options and classes as `render`), and the whole audio's log-mel spectrogram at
16 kHz. A pair that cannot be used is reported in one line and skipped; the rest go on. Songs already in
the dataset are skipped, so an interrupted run resumes by running it again, and a larger PAIRS_DIR adds only
its new songs. `--jobs N` processes pairs in N processes; `--shard I/N` lets N separate processes (a Slurm
array) share the pairs. With `--soundfont`, the audio side is rendered from the MIDI itself.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectrosynth.batch.jobs import find_midi_files, shard_of
from spectrosynth.constants import HOP_LENGTH, MAX_LOG_MEL, SAMPLE_RATE
from spectrosynth.data.store import (
    SETTINGS_FILE,
    SHARDS,
    DatasetError,
    ShardWriter,
    Song,
    read_settings,
    remove_temporaries,
    shard_files,
    song_row,
    write_settings,
)
from spectrosynth.errors import SpectrosynthError

#: Audio formats paired with a MIDI file of the same name, in order of preference when several exist.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
#: The audio may end this much before the last note does (a release cut short) ...
SHORTER_TOLERANCE = 1.0  # seconds
#: ... and this much after it by default (reverb tails, silence a DAW bounce adds): --max-extra.
DEFAULT_MAX_EXTRA = 10.0  # seconds
#: Audio whose peak stays below this is silent (-80 dBFS).
SILENT_PEAK = 1e-4
#: A song whose loud bins exceed the mel's ceiling (ln-mel 4.0, where the targets are clipped) in more than
#: this share of its values is attenuated until they do not (training-spec.md §1, "Level").
CLIPPED_SHARE = 0.001
#: A song needs at least this many frames for a training chunk (a target of 2 frames after 0 of context).
MIN_FRAMES = 2


@dataclass(frozen=True)
class DatasetSettings:
    """What decides a dataset's content: a run that adds to a dataset must use the same."""

    programs: tuple[str, ...] = ()
    tracks: tuple[str, ...] = ()
    mutes: tuple[str, ...] = ()
    no_drums: bool = False
    holdout: float = 0.0
    soundfont: str | None = None  # the file's name and checksum, when the audio is rendered from the MIDI
    max_extra: float = DEFAULT_MAX_EXTRA
    sample_rate: int = SAMPLE_RATE
    front_end: str = "melgan-tf-v1"  # spectrosynth.features.log_mel_spectrogram

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("programs", "tracks", "mutes"):
            data[key] = list(data[key])
        return data

    def remap(self):
        from spectrosynth.remap import Remap

        return Remap.from_options(self.programs, self.tracks, self.mutes, self.no_drums)


@dataclass(frozen=True)
class Pair:
    """A MIDI file and the audio that plays it, by paths relative to PAIRS_DIR (audio None: to render)."""

    id: str
    midi: str
    audio: str | None


@dataclass
class BuildReport:
    """What a run did."""

    pairs: int = 0  # pairs found (in this shard)
    added: list[str] = field(default_factory=list)
    existing: int = 0  # already in the dataset, skipped
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (pair, one-line reason)
    audio_seconds: float = 0.0
    attenuated: list[tuple[str, float]] = field(default_factory=list)  # (id, gain dB)


def find_pairs(pairs_dir: Path, rendered: bool = False) -> tuple[list[Pair], list[tuple[str, str]]]:
    """MIDI files below `pairs_dir` and the audio of the same name beside each; with `rendered` (a
    soundfont renders the audio) the MIDI files alone. Returns the pairs and the MIDI files without audio."""
    if not pairs_dir.is_dir():
        raise SpectrosynthError(f"no such folder: {pairs_dir}; give the folder that holds the pairs")
    pairs, lonely = [], []
    for rel in find_midi_files(pairs_dir):
        stem = rel.rsplit(".", 1)[0]
        if rendered:
            pairs.append(Pair(stem, rel, None))
            continue
        audio = next((stem + s for s in AUDIO_SUFFIXES if _exists_any_case(pairs_dir, stem, s)), None)
        if audio is None:
            lonely.append((rel, f"no audio file {Path(stem).name}.wav/.flac/.ogg/.mp3 beside it"))
        else:
            pairs.append(Pair(stem, rel, _actual_name(pairs_dir, stem, audio[len(stem) :])))
    return pairs, lonely


def _exists_any_case(folder: Path, stem: str, suffix: str) -> bool:
    return _actual_name(folder, stem, suffix) is not None


def _actual_name(folder: Path, stem: str, suffix: str) -> str | None:
    for candidate in (suffix, suffix.upper()):
        if (folder / (stem + candidate)).is_file():
            return stem + candidate
    return None


def split_of(song_id: str, holdout: float) -> str:
    """'validation' for about `holdout` of the songs, chosen by a checksum of the id alone: the same song is
    always in the same split, whatever else the dataset holds or in which order it was added."""
    if holdout <= 0:
        return "train"
    digest = hashlib.sha256(song_id.encode("utf-8")).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < holdout else "train"


def whole_file_mel(audio: np.ndarray) -> np.ndarray:
    """The mel of a whole file on the original's frame grid: padded with 1-320 zeros to whole frames
    (magenta `_audio_to_frames`), so samples // 320 + 1 frames. (frames, 128) float32 natural-log mel."""
    from spectrosynth.features import log_mel_spectrogram

    padding = HOP_LENGTH - len(audio) % HOP_LENGTH
    return log_mel_spectrogram(np.pad(audio, (0, padding)))


class Unusable(SpectrosynthError):
    """A pair that is skipped, with the reason."""


def process_pair(
    pair: Pair, pairs_dir: Path, settings: DatasetSettings, soundfont: Path | None, audio_out: Path | None
) -> tuple[dict[str, Any], float]:
    """One pair -> (its dataset row, its audio seconds). Raises Unusable (or another SpectrosynthError)."""
    from spectrosynth.midi import read_midi
    from spectrosynth.remap import apply_remap
    from spectrosynth.tokens import model_notes

    score = read_midi(pairs_dir / pair.midi)
    remap = settings.remap()
    if not remap.is_identity():
        score, _ = apply_remap(score, remap)
    notes, duration = model_notes(score)
    if not notes:
        raise Unusable("no notes to learn from (after the instrument options)")
    if soundfont is not None:
        audio = _render(score, soundfont)
        audio_name = f"soundfont:{soundfont.name}"
    else:
        from spectrosynth.features import load_audio

        audio = load_audio(pairs_dir / pair.audio)
        audio_name = pair.audio
    seconds = len(audio) / SAMPLE_RATE
    if len(audio) == 0 or float(np.max(np.abs(audio))) < SILENT_PEAK:
        raise Unusable("the audio is silent")
    if seconds < duration - SHORTER_TOLERANCE or seconds > duration + settings.max_extra:
        raise Unusable(
            f"the audio lasts {seconds:.1f} s but the MIDI's notes {duration:.1f} s (allowed: "
            f"{SHORTER_TOLERANCE:g} s shorter to {settings.max_extra:g} s longer, --max-extra); "
            "are they the same performance?"
        )
    mel = whole_file_mel(audio)
    gain_db = 0.0
    if np.mean(mel >= MAX_LOG_MEL) > CLIPPED_SHARE:
        # log-mel shifts by ln(g) under a gain g: put the loudest 0.1 % at the ceiling, then measure again.
        ln_gain = MAX_LOG_MEL - float(np.quantile(mel, 1.0 - CLIPPED_SHARE))
        audio = audio * np.float32(np.exp(ln_gain))
        gain_db = 20.0 * ln_gain / np.log(10.0)
        mel = whole_file_mel(audio)
    if len(mel) < MIN_FRAMES:
        raise Unusable("the audio is too short")
    if audio_out is not None:
        _save_audio(audio_out / f"{pair.id}.flac", audio)
    song = Song(
        pair.id, split_of(pair.id, settings.holdout), duration, mel, notes, pair.midi, audio_name, gain_db
    )
    return song_row(song, seconds), seconds


def _render(score, soundfont: Path) -> np.ndarray:
    import soxr

    from spectrosynth.soundfont import render_score

    rendered = render_score(score, soundfont, sample_rate=44100)
    audio = np.asarray(getattr(rendered, "audio", rendered), dtype=np.float32)
    return soxr.resample(audio, 44100, SAMPLE_RATE).astype(np.float32)


def _save_audio(path: Path, audio: np.ndarray) -> None:
    import soundfile as sf

    from spectrosynth.audio import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, force=True) as f:
        sf.write(f, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_24")


def _existing_ids(data_dir: Path) -> set[str]:
    from spectrosynth.data.store import DatasetError, pyarrow

    _, pq = pyarrow()
    ids: set[str] = set()
    for path in shard_files(data_dir):
        try:
            ids.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        except Exception as e:  # noqa: BLE001
            raise DatasetError(
                f"dataset shard {path} is damaged ({type(e).__name__}); delete it and run the same command "
                "again to rebuild its songs"
            ) from e
    return ids


def soundfont_identity(path: Path) -> str:
    """'NAME.sf2 sha256:...' of a soundfont file, so a dataset remembers which one made its audio."""
    if not path.is_file():
        raise SpectrosynthError(f"no soundfont file {path}; give the path of an .sf2 file")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name} sha256:{digest.hexdigest()[:16]}"


Progress = Callable[[str, str, str | None], None]  # (pair id, "added" | "rejected" | "existing", reason)


def build_dataset(
    pairs_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    settings: DatasetSettings = DatasetSettings(),
    *,
    soundfont: str | os.PathLike[str] | None = None,
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
    songs_per_shard: int = 32,
    save_audio: bool = False,
    planned: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> BuildReport:
    """Add the pairs of `pairs_dir` that `data_dir` lacks. See the module docstring."""
    pairs_dir, data_dir = Path(pairs_dir), Path(data_dir)
    font = Path(soundfont) if soundfont is not None else None
    if font is not None:
        settings = DatasetSettings(**{**asdict(settings), "soundfont": soundfont_identity(font)})
    settings.remap()  # a bad instrument option fails before any work
    if not 0.0 <= settings.holdout < 1.0:
        raise SpectrosynthError(f"--holdout must be from 0 to below 1, not {settings.holdout}")
    pairs, lonely = find_pairs(pairs_dir, rendered=font is not None)
    report = BuildReport(rejected=list(lonely))
    if not pairs and not lonely:
        raise SpectrosynthError(
            f"no MIDI files in {pairs_dir}; a pair is song.mid with song.wav/.flac/.ogg/.mp3 beside it "
            "(or MIDI files alone with --soundfont)"
        )
    _open_dataset(data_dir, settings)
    if shard is not None:
        pairs = [p for p in pairs if shard_of(p.id, shard[1]) == shard[0]]
    report.pairs = len(pairs)
    done = _existing_ids(data_dir)
    todo = [p for p in pairs if p.id not in done]
    report.existing = len(pairs) - len(todo)
    for rel, reason in lonely:
        _tell(progress, rel, "rejected", reason)
    if planned is not None:
        planned(len(todo))
    audio_out = data_dir / "audio" if save_audio else None
    writer = ShardWriter(data_dir, songs_per_shard)
    try:
        for pair, outcome in _run(todo, pairs_dir, settings, font, audio_out, jobs):
            if isinstance(outcome, BaseException):
                reason = str(outcome) if isinstance(outcome, SpectrosynthError) else _describe(outcome)
                report.rejected.append((pair.midi, reason))
                _tell(progress, pair.id, "rejected", reason)
                continue
            row, seconds = outcome
            writer.add(row)
            report.added.append(pair.id)
            report.audio_seconds += seconds
            if row["gain_db"] < 0:
                report.attenuated.append((pair.id, row["gain_db"]))
            _tell(progress, pair.id, "added", None)
    finally:
        writer.close()  # on Ctrl-C too: the songs finished so far are kept
    return report


def _tell(progress: Progress | None, song: str, what: str, reason: str | None) -> None:
    if progress is not None:
        progress(song, what, reason)


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split())[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _open_dataset(data_dir: Path, settings: DatasetSettings) -> None:
    """Create the dataset folder, or check that an existing one was made with the same settings."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is a file; give a folder for the dataset")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create {data_dir} ({e.strerror or e}); choose another folder") from e
    existing = read_settings(data_dir)
    wanted = settings.to_dict()
    if existing is None:
        # Another process of the same run (--shard) may be creating the dataset at this moment: only files
        # that are not the dataset's own make the folder someone else's.
        own = {SETTINGS_FILE, SHARDS, "audio"}
        if any(p.name not in own and not p.name.startswith(".") for p in data_dir.iterdir()):
            raise DatasetError(
                f"{data_dir} is not empty and holds no dataset; give a new or empty folder for the dataset"
            )
        write_settings(data_dir, wanted)
        return
    differing = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
    if differing:
        was = ", ".join(f"{k}={existing.get(k)!r}" for k in differing)
        raise DatasetError(
            f"{data_dir} was made with other settings ({was}); add to it with the same options, or give "
            "a new DATA_DIR"
        )
    remove_temporaries(data_dir)


def _run(todo: list[Pair], pairs_dir, settings, font, audio_out, jobs: int):
    """(pair, (row, seconds) or the exception) for every pair, in any order."""
    if jobs <= 1 or len(todo) <= 1:
        for pair in todo:
            yield pair, _attempt(pair, pairs_dir, settings, font, audio_out)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_attempt, p, pairs_dir, settings, font, audio_out): p for p in todo}
        try:
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _attempt(pair, pairs_dir, settings, font, audio_out):
    """process_pair, with a failure returned (not raised) so that one bad pair does not stop the others."""
    try:
        return process_pair(pair, pairs_dir, settings, font, audio_out)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - reported per pair
        return e
