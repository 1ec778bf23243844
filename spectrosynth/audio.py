"""Write rendered audio to WAV or FLAC files (or stdout) progressively, safely and with bounded memory.

The model produces float32 mono audio at 16 kHz, one 5.12 s segment at a time. `AudioWriter` takes those
chunks as they come and:

* resamples them on the fly (python-soxr, "VHQ") when another output rate is asked for;
* applies a gain, an optional peak normalization or loudness target (ITU-R BS.1770-4 integrated
  loudness, measured as the samples pass by `spectrosynth.loudness`) and a clip policy ("rescale", "clamp"
  or "none");
* never holds the whole song in memory: normalization, a loudness target and "rescale" need the whole
  song's peak or loudness, so the samples first go to an anonymous float32 scratch file and are read back
  in chunks of 1 M samples at `close()`;
* writes mono, or stereo when made with `channels=2` (chunks of shape (samples, 2));
* writes the file atomically: into a hidden ``.OUT.wav.<random>.part`` file in the target's folder that
  `close()` moves onto the target with `os.replace` (or `os.link`, which cannot clobber, without --force).
  An exception, Ctrl-C or `abort()` removes every temporary and leaves an existing target untouched.

Typical use::

    check_output(out, force)                   # before the long render: fail at once on a bad path
    fmt = output_format(out, fmt_option)
    with AudioWriter(out, fmt, bit_depth=24, sample_rate=48000, force=force) as writer:
        for chunk in synth.stream(...):
            writer.write(chunk)
    summary = writer.summary                   # or: summary = writer.close() without `with`
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from spectrosynth.constants import SAMPLE_RATE
from spectrosynth.errors import OutputError

FORMATS = ("wav", "flac")
EXTENSIONS = {".wav": "wav", ".wave": "wav", ".flac": "flac"}
BIT_DEPTHS = {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}
CLIP_POLICIES = ("rescale", "clamp", "none")

CHUNK_SAMPLES = 1 << 20  # samples processed at a time (4 MiB of float32)
_COPY_BYTES = 1 << 20  # stdout copy buffer
_RESAMPLE_QUALITY = "VHQ"


def db_to_gain(db: float) -> float:
    """Decibels to a linear amplitude factor: 0 dB -> 1.0, -6.02 dB -> 0.5."""
    return 10.0 ** (float(db) / 20.0)


def gain_to_db(gain: float) -> float:
    """A linear amplitude factor to decibels; 0 (silence) gives -inf."""
    gain = abs(float(gain))
    return 20.0 * math.log10(gain) if gain > 0 else -math.inf


def output_format(path: str | os.PathLike[str], fmt: str | None) -> str:
    """The output format, "wav" or "flac": `fmt` when given, else from the extension of `path`."""
    path = os.fspath(path)
    if path != "-" and os.path.isdir(path):
        raise OutputError(
            f"{path} is a folder; give the name of the audio file to write, e.g. {path}/song.wav"
        )
    ext = os.path.splitext(path)[1].lower()
    if fmt is not None:
        fmt = _check_format(fmt)
        if EXTENSIONS.get(ext, fmt) != fmt:
            raise OutputError(
                f"{path} is named like a {EXTENSIONS[ext].upper()} file but --format {fmt} was given; "
                f"rename it .{fmt} or drop --format"
            )
        return fmt
    if path == "-":
        raise OutputError("writing to standard output (-) needs a format; add --format wav or --format flac")
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        what = f"extension {ext!r}" if ext else "no extension"
        raise OutputError(
            f"{path} has {what}, so its audio format is unknown; "
            "name it .wav or .flac, or add --format wav|flac"
        )
    return EXTENSIONS[ext]


def subtype_for(fmt: str, bit_depth: int) -> str:
    """The soundfile subtype for a format and bit depth: 16 -> PCM_16, 24 -> PCM_24, 32 -> FLOAT (WAV)."""
    fmt = _check_format(fmt)
    if isinstance(bit_depth, bool) or bit_depth not in BIT_DEPTHS:
        raise OutputError(
            f"unsupported bit depth {bit_depth!r}; use --bit-depth 16, 24 or 32 (32-bit float, WAV only)"
        )
    if fmt == "flac" and bit_depth == 32:
        raise OutputError("FLAC holds at most 24 bits; use --bit-depth 24 or a .wav file")
    return BIT_DEPTHS[bit_depth]


def check_output(path: str | os.PathLike[str], force: bool) -> None:
    """Fail at once, before a long render, if `path` cannot be written; "-" (stdout) is always fine."""
    path = os.fspath(path)
    if path == "-":
        return
    target = _resolve(path)
    if os.path.isdir(target) or not os.path.basename(target):
        raise OutputError(f"{path} is a folder; give a file name such as {os.path.join(path, 'song.wav')}")
    if os.path.lexists(target):
        if not os.path.isfile(target):
            raise OutputError(f"{path} exists and is not a regular file; choose another output path")
        if not force:
            raise OutputError(f"{path} exists; use -f/--force to overwrite")
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.exists(folder):
        raise OutputError(f"folder {folder} does not exist; create it first (mkdir -p {folder})")
    if not os.path.isdir(folder):
        raise OutputError(
            f"{folder} is not a folder, so {path} cannot be written; choose another output path"
        )
    allowed = os.access(folder, os.W_OK | os.X_OK)
    try:  # os.access can be wrong (root, ACLs, network file systems): really create a file
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".spectrosynth-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputError(_unwritable(folder, e.strerror or str(e))) from None
    if not allowed:
        raise OutputError(_unwritable(folder, "permission denied"))


@dataclass(frozen=True)
class WriteSummary:
    """What `AudioWriter.close()` wrote."""

    path: str  # the target as given ("-" for stdout)
    format: str  # "wav" or "flac"
    subtype: str  # soundfile subtype: PCM_16, PCM_24 or FLOAT
    sample_rate: int  # Hz
    frames: int  # sample frames written (one sample per channel each)
    duration: float  # seconds
    peak: float  # linear peak of the final output, before PCM quantisation
    scale: float  # factor applied by normalize, --loudness, a given level and/or rescale (1.0: none)
    clipped_samples: int  # samples hard-limited to +-1 (--clip clamp, or --clip none with PCM output)
    notice: str | None  # a line for the user when the level was changed or clipped, else None
    channels: int = 1
    loudness: float | None = None  # integrated loudness of the output in LUFS, when --loudness measured it

    @property
    def peak_dbfs(self) -> float:
        return gain_to_db(self.peak)


class AudioWriter:
    """Receives float32 chunks at `input_rate` and writes one WAV/FLAC file; see the module docstring.

    The level: `gain_db` always; then at most one of `normalize` (the peak at `peak_db`), `loudness` (the
    integrated loudness at that many LUFS, but never a peak above `peak_db`: the notice says when that
    ceiling held it lower) and `deferred_level` (a scale given to `close(level=...)`, decided elsewhere: a
    stem takes its mix's).

    `clip` says what happens to samples beyond +-1 (after gain and normalize):
    "rescale" scales the whole file down so its peak is exactly 1.0 (two passes, like demucs' default);
    "clamp" hard-limits samples to +-1; "none" keeps them, which only 32-bit float can store: PCM output
    cannot hold them, so with "none" they are clipped exactly like "clamp" (the encoder would clip anyway)
    and counted in `clipped_samples`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: str,
        bit_depth: int = 16,
        sample_rate: int | None = None,
        *,
        input_rate: int = SAMPLE_RATE,
        gain_db: float = 0.0,
        normalize: bool = False,
        peak_db: float = -1.0,
        clip: str = "rescale",
        force: bool = False,
        stdout: BinaryIO | None = None,
        channels: int = 1,
        loudness: float | None = None,
        deferred_level: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.format = _check_format(fmt)
        self.subtype = subtype_for(self.format, bit_depth)
        self.bit_depth = bit_depth
        self.input_rate = _check_rate(input_rate, "input rate")
        self.sample_rate = (
            self.input_rate if sample_rate is None else _check_rate(sample_rate, "--sample-rate")
        )
        if not math.isfinite(gain_db):
            raise OutputError(f"--gain must be a finite number of dB, not {gain_db}")
        if not math.isfinite(peak_db):
            raise OutputError(f"--peak must be a finite number of dBFS, not {peak_db}")
        if clip not in CLIP_POLICIES:
            raise OutputError(f"unknown --clip {clip!r}; use rescale, clamp or none")
        if channels not in (1, 2):
            raise OutputError(f"--channels must be 1 (mono) or 2 (stereo), not {channels}")
        if loudness is not None and not (math.isfinite(loudness) and -70.0 <= loudness <= 0.0):
            raise OutputError(f"--loudness must be between -70 and 0 LUFS (e.g. -14 or -23), not {loudness}")
        if sum((bool(normalize), loudness is not None, bool(deferred_level))) > 1:
            raise OutputError("--normalize and --loudness each set the level; give only one of them")
        self.channels = channels
        self.loudness = None if loudness is None else float(loudness)
        self.deferred_level = bool(deferred_level)
        self.gain = db_to_gain(gain_db)
        self.normalize = bool(normalize)
        self.peak_db = float(peak_db)
        self.clip = clip
        self.force = bool(force)
        self._stdout = stdout
        self._pcm = self.subtype != "FLOAT"
        self._two_pass = (
            self.normalize or self.loudness is not None or self.deferred_level or self.clip == "rescale"
        )
        self._meter = None  # LoudnessMeter of the output-rate samples, with --loudness
        self._ended = False  # level() or close() has flushed the resampler
        #: Called with every block of samples as soon as it is at the output rate, times the gain: what the
        #: file gets unless the level changes it at the end (normalize, --loudness, --clip rescale), before
        #: clipping and PCM quantisation. For hearing a render as it is made (spectrosynth.playback). It
        #: must not modify the array, and must copy what it keeps.
        self.monitor: Callable[[np.ndarray], None] | None = None

        self.summary: WriteSummary | None = None
        self._state = "open"  # open -> closed | aborted
        self._sf = None  # soundfile.SoundFile being written
        self._part: str | None = None  # named temporary next to the target
        self._out_tmp = None  # anonymous temporary holding the encoded file for stdout
        self._scratch = None  # anonymous float32 scratch file (two-pass mode)
        self._resampler = None
        self._frames = 0  # samples written to the output file
        self._raw_peak = 0.0  # peak of everything written to scratch (two-pass) / before clipping (direct)
        self._clipped = 0

        if self._to_stdout:
            self._target = None
            if stdout is None and _isatty(sys.stdout):
                raise OutputError(
                    "standard output is a terminal; redirect it to a file (> song.wav) "
                    "or pipe it to a program"
                )
        else:
            check_output(self.path, self.force)
            self._target = _resolve(self.path)
        try:
            self._open()
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError | _soundfile_error()):
                raise self._write_error(e) from e
            raise

    # -- public API -------------------------------------------------------------------------------------

    def write(self, chunk: np.ndarray) -> None:
        """Add float32 samples at `input_rate` (any length, 0 included): a 1-D array for mono, or
        (samples, 2) for stereo."""
        if self._state != "open":
            raise ValueError(f"write to an AudioWriter that is already {self._state}")
        if self._ended:
            raise ValueError("write to an AudioWriter after level(): the audio had ended")
        data = np.asarray(chunk)
        if self.channels == 1:
            if data.ndim == 2 and 1 in data.shape:
                data = data.reshape(-1)
            if data.ndim != 1:
                raise ValueError(f"AudioWriter takes mono audio (a 1-D array), got shape {data.shape}")
        elif data.ndim != 2 or data.shape[1] != self.channels:
            raise ValueError(f"this AudioWriter takes (samples, {self.channels}) arrays, got {data.shape}")
        try:
            for start in range(0, len(data), CHUNK_SAMPLES):
                x = data[start : start + CHUNK_SAMPLES].astype(np.float32, copy=True)
                bad = x.size - int(np.count_nonzero(np.isfinite(x)))
                if bad:
                    raise OutputError(
                        f"the audio for {self._display} contains {bad} NaN or infinite samples, so nothing "
                        "was written; this is a numeric problem in the model: try --dtype float32"
                    )
                if self._resampler is not None:
                    x = self._resampler.resample_chunk(x)
                self._take(x)
        except BaseException as e:
            self._fail(e)

    def level(self) -> float:
        """The scale that `close()` will apply before the gain to the audio written so far (normalize or
        --loudness, then --clip rescale; 1.0 for none of them), for stems to take their mix's level. Call
        it after the last `write()`."""
        self._flush_resampler()
        return self._scale(None)[0] if self._two_pass else 1.0

    def close(self, level: float | None = None) -> WriteSummary:
        """Finish the file and publish it (replace the target, or copy to stdout); return what was written.

        `level`: the scale to apply, for a writer made with `deferred_level` (its mix's `level()`)."""
        if self._state == "closed":
            assert self.summary is not None
            return self.summary
        if self._state != "open":
            raise ValueError("close an AudioWriter that was aborted")
        if (level is not None) != self.deferred_level:
            raise ValueError("close(level=...) goes with, and only with, AudioWriter(deferred_level=True)")
        try:
            self._flush_resampler()
            scale, notice = self._second_pass(level) if self._two_pass else (1.0, self._direct_notice())
            if not self._frames and self.format == "flac":  # libsndfile writes 0 bytes: not a FLAC file
                raise OutputError(
                    f"there is no audio to write to {self._display} (0 samples), and an empty FLAC file "
                    "cannot be made; check the input, or write a .wav file"
                )
            self._sf.close()
            self._sf = None
            self._publish()
        except BaseException as e:
            self._fail(e)
        self._state = "closed"
        peak = self._raw_peak * self.gain * scale if self._two_pass else self._raw_peak
        if self.clip == "rescale" or self._pcm or self.clip == "clamp":
            peak = min(peak, 1.0)
        loudness = None
        if self._meter is not None and (measured := self._meter.integrated()) is not None:
            loudness = measured + gain_to_db(scale * self.gain) if measured > -math.inf else measured
        self.summary = WriteSummary(
            path=self.path,
            format=self.format,
            subtype=self.subtype,
            sample_rate=self.sample_rate,
            frames=self._frames,
            duration=self._frames / self.sample_rate,
            peak=peak,
            scale=scale,
            clipped_samples=self._clipped,
            notice=notice,
            channels=self.channels,
            loudness=loudness,
        )
        return self.summary

    def abort(self) -> None:
        """Remove every temporary file; the target is left as it was. Safe to call more than once."""
        if self._state == "closed":
            return
        self._state = "aborted"
        for thing in (self._sf, self._scratch, self._out_tmp):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass
        self._sf = self._scratch = self._out_tmp = None
        if self._part is not None:
            try:
                os.remove(self._part)
            except FileNotFoundError:
                pass
            except OSError:  # pragma: no cover - best effort
                pass
            self._part = None

    def __enter__(self) -> AudioWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # an unclosed writer that is garbage-collected leaves nothing behind
        if getattr(self, "_state", "closed") == "open":
            try:
                self.abort()
            except Exception:
                pass

    # -- internals --------------------------------------------------------------------------------------

    @property
    def _to_stdout(self) -> bool:
        return self.path == "-"

    @property
    def _display(self) -> str:
        return "standard output" if self._to_stdout else self.path

    def _open(self) -> None:
        import soundfile as sf

        options = dict(
            mode="w",
            samplerate=self.sample_rate,
            channels=self.channels,
            subtype=self.subtype,
            format=self.format.upper(),
        )
        if self._to_stdout:
            folder = None  # the system temporary folder (TMPDIR)
            self._out_tmp = tempfile.TemporaryFile()
            self._sf = sf.SoundFile(self._out_tmp, **options)
        else:
            folder = os.path.dirname(os.path.abspath(self._target))
            fd, self._part = _create_part(self._target)
            self._sf = sf.SoundFile(fd, closefd=True, **options)
        if self._two_pass:
            # Anonymous (O_TMPFILE or unlinked at once): nothing is left behind even after a kill -9.
            self._scratch = tempfile.TemporaryFile(dir=folder, buffering=0)
        if self.sample_rate != self.input_rate:
            import soxr

            self._resampler = soxr.ResampleStream(
                self.input_rate, self.sample_rate, self.channels, dtype="float32", quality=_RESAMPLE_QUALITY
            )
        if self.loudness is not None:
            from spectrosynth.loudness import LoudnessMeter

            self._meter = LoudnessMeter(self.sample_rate, self.channels)

    def _flush_resampler(self) -> None:
        """The resampler's last samples (once, at the end: no `write()` after it)."""
        self._ended = True
        if self._resampler is not None:
            empty = np.zeros((0,) if self.channels == 1 else (0, self.channels), np.float32)
            self._take(self._resampler.resample_chunk(empty, last=True))
            self._resampler = None

    def _take(self, y: np.ndarray) -> None:
        """Handle float32 samples at the output rate that this writer owns (they may be changed in place)."""
        if not y.size:
            return
        peak = max(float(y.max()), -float(y.min()))
        if self._two_pass:
            self._raw_peak = max(self._raw_peak, peak)
            if self._meter is not None:
                self._meter.feed(y)
            if self.monitor is not None:
                self.monitor(y * np.float32(self.gain) if self.gain != 1.0 else y)
            _write_all(self._scratch, memoryview(np.ascontiguousarray(y).reshape(-1)).cast("B"))
            return
        if self.gain != 1.0:
            y *= np.float32(self.gain)
            peak *= self.gain
        if self.monitor is not None:
            self.monitor(y)
        self._raw_peak = max(self._raw_peak, peak)
        self._emit(y, peak)

    def _emit(self, y: np.ndarray, peak: float, rounding_only: bool = False) -> None:
        """Clip (per policy) and encode final samples. `rounding_only`: the exact peak is <= 1.0, so any
        sample past 1.0 is float32 rounding, clipped without being counted."""
        if peak > 1.0:
            if rounding_only or self.clip == "rescale":
                np.clip(y, -1.0, 1.0, out=y)
            elif self.clip == "clamp" or self._pcm:
                self._clipped += int(np.count_nonzero(np.abs(y) > 1.0))
                np.clip(y, -1.0, 1.0, out=y)
        self._sf.write(y)
        self._frames += len(y)

    def _level(self, given: float | None) -> tuple[float, str | None]:
        """The scale from normalize, --loudness or `given` (before the gain), and a notice about it."""
        if given is not None:
            return float(given), None
        if self.normalize:
            if self._raw_peak > 0:
                return db_to_gain(self.peak_db) / self._raw_peak, None
            return 1.0, "the audio is silent, so --normalize left it unchanged"
        if self._meter is None:
            return 1.0, None
        measured = self._meter.integrated()
        if measured is None:
            return 1.0, "the audio is shorter than 0.4 s, too short to measure: --loudness left it unchanged"
        if measured == -math.inf:
            return 1.0, "the audio is silent, so --loudness left it unchanged"
        scale = db_to_gain(self.loudness - measured)
        ceiling = db_to_gain(self.peak_db)
        if self._raw_peak * scale > ceiling:
            scale = ceiling / self._raw_peak
            return scale, (
                f"its loudness is {measured + gain_to_db(scale):.1f} LUFS, not {self.loudness:g}: more would "
                f"put its peak above {self.peak_db:g} dBFS"
            )
        return scale, None

    def _scale(self, given: float | None = None) -> tuple[float, str | None]:
        """The final scale before the gain (level, then --clip rescale) and a notice about it."""
        scale, notice = self._level(given)
        peak = self._raw_peak * scale * self.gain
        if self.clip == "rescale" and peak > 1.0:
            scale /= peak
            db = gain_to_db(peak)
            notice = (
                f"the output peaked at {_db(db)} dBFS and was scaled down by {_db(db, sign=False)} dB "
                "to avoid clipping (--clip rescale)"
            )
        return scale, notice

    def _second_pass(self, given: float | None = None) -> tuple[float, str | None]:
        """Read the scratch file back in chunks, apply the final scale, encode. Returns (scale, notice)."""
        scale, notice = self._scale(given)
        total = np.float32(scale * self.gain)
        final_peak = float(self._raw_peak * scale * self.gain)
        self._scratch.seek(0)
        buf = np.empty(CHUNK_SAMPLES * self.channels, np.float32)
        while True:
            n = _read_into(self._scratch, memoryview(buf).cast("B")) // 4
            if not n:
                break
            y = buf[:n] if self.channels == 1 else buf[:n].reshape(-1, self.channels)
            if total != 1.0:
                y *= total
            self._emit(y, max(float(y.max()), -float(y.min())), rounding_only=final_peak <= 1.0)
        self._scratch.close()
        self._scratch = None
        if self.clip != "rescale" and final_peak > 1.0:
            notice = self._overload_notice(final_peak)
        return scale, notice

    def _direct_notice(self) -> str | None:
        return self._overload_notice(self._raw_peak) if self._raw_peak > 1.0 else None

    def _overload_notice(self, peak: float) -> str:
        level = _db(gain_to_db(peak))
        if self._clipped:
            share = 100.0 * self._clipped / max(self._frames, 1)
            how = (
                "clamped to full scale (--clip clamp)"
                if self.clip == "clamp"
                else (f"clipped, as {self.bit_depth}-bit PCM cannot go beyond full scale (--clip none)")
            )
            return f"the output peaked at {level} dBFS; {self._clipped} samples ({share:.2g}%) were {how}"
        return (
            f"the output peaks at {level} dBFS, beyond full scale; kept as is in 32-bit float (--clip none)"
        )

    def _publish(self) -> None:
        if self._to_stdout:
            out = self._stdout if self._stdout is not None else sys.stdout.buffer
            self._out_tmp.seek(0)
            try:
                shutil.copyfileobj(self._out_tmp, out, _COPY_BYTES)
                out.flush()
            except BrokenPipeError:
                raise OutputError(
                    "the program reading standard output stopped before all the audio was written"
                ) from None
            self._out_tmp.close()
            self._out_tmp = None
            return
        _publish_part(self._part, self._target, self.force, self._appeared())
        self._part = None

    def _appeared(self) -> str:
        return f"{self.path} appeared while rendering and was left alone; use -f/--force to overwrite"

    def _fail(self, e: BaseException) -> None:
        """Clean up after an error in write/close and re-raise it (I/O failures as a one-line OutputError)."""
        self.abort()
        if isinstance(e, OutputError) or not isinstance(e, OSError | _soundfile_error()):
            raise e
        raise self._write_error(e) from e

    def _write_error(self, e: BaseException) -> OutputError:
        reason = getattr(e, "strerror", None) or str(e).strip().rstrip(".") or type(e).__name__
        folder = tempfile.gettempdir() if self._to_stdout else os.path.dirname(os.path.abspath(self._target))
        try:
            full = shutil.disk_usage(folder).free < (16 << 20)
        except OSError:
            full = False
        hint = "the disk is full; free some space" if full else "check free disk space and permissions"
        return OutputError(f"could not write {self._display} ({reason}); {hint}, then run again")


# -- helpers ------------------------------------------------------------------------------------------------


def _check_format(fmt: str) -> str:
    name = str(fmt).strip().lower().lstrip(".")
    name = {"wave": "wav"}.get(name, name)
    if name not in FORMATS:
        raise OutputError(f"unknown audio format {fmt!r}; use --format wav or --format flac")
    return name


def _check_rate(rate: int, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or not 1 <= rate <= 768_000:
        raise OutputError(f"{what} must be a whole number of Hz between 1 and 768000, not {rate!r}")
    return int(rate)


def _resolve(path: str) -> str:
    """Where the output really goes: a symlink is followed, so the file it points to is replaced."""
    return os.path.realpath(path) if os.path.islink(path) else path


def _unwritable(folder: str, reason: str) -> str:
    return f"cannot write to folder {folder} ({reason}); choose another output path or fix its permissions"


#: Written into every temporary's name when set (``.NAME.<tag>.<random>.part``): batch rendering sets it to
#: its writer's identity, so that the temporaries of a writer that died can be told from those of one still
#: running (spectrosynth.batch.writers).
PART_TAG: str | None = None


def _create_part(target: str) -> tuple[int, str]:
    """Create the hidden temporary ``.NAME.[TAG.]<random>.part`` next to `target` (mode 0666 minus umask)."""
    folder, name = os.path.split(os.path.abspath(target))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tag = f"{PART_TAG}." if PART_TAG else ""
    for _ in range(100):
        part = os.path.join(folder, f".{name[:200]}.{tag}{secrets.token_hex(4)}.part")
        try:
            return os.open(part, flags, 0o666), part
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {target}")  # pragma: no cover


def _publish_part(part: str, target: str, force: bool, appeared: str) -> None:
    """Move a finished temporary file onto `target`: atomically, and never over a file without `force`."""
    _fsync_file(part)
    if force:
        try:  # keep the permissions of the file being replaced
            os.chmod(part, stat.S_IMODE(os.stat(target).st_mode))
        except OSError:
            pass
        os.replace(part, target)
    else:
        try:
            os.link(part, target)  # atomic, and fails if the target appeared meanwhile
        except FileExistsError:
            raise OutputError(appeared) from None
        except OSError:  # a file system without hard links: check, then rename
            if os.path.lexists(target):
                raise OutputError(appeared) from None
            os.replace(part, target)
        else:
            os.remove(part)
    _fsync_dir(os.path.dirname(os.path.abspath(target)))


@contextmanager
def atomic_file(path: str | os.PathLike[str], force: bool = False) -> Iterator[BinaryIO]:
    """A binary file written next to `path` and moved onto it only when the block succeeds.

    On any error (Ctrl-C included) the temporary is removed and `path` is untouched; an existing `path`
    is replaced only with `force`. Used for files other than the audio (the spectrogram's .npy).
    """
    check_output(path, force)
    target = _resolve(os.fspath(path))
    fd, part = _create_part(target)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        _publish_part(part, target, force, f"{path} appeared meanwhile and was left alone; use -f/--force")
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(part)
        raise


def _write_all(f, data: memoryview) -> None:
    while data:
        n = f.write(data)
        if n is None:  # pragma: no cover - non-blocking files only
            continue
        data = data[n:]


def _read_into(f, buf: memoryview) -> int:
    """Fill `buf` from `f` (a raw file); returns the bytes read, less than len(buf) only at the end."""
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    """Make the rename durable; not possible everywhere (Windows), so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _soundfile_error() -> type[BaseException]:
    import soundfile as sf

    return getattr(sf, "SoundFileError", RuntimeError)


def _db(db: float, sign: bool = True) -> str:
    """A dB value with enough decimals not to read as 0.0 (a peak of 1.001 is +0.01 dB)."""
    value = db if sign else abs(db)
    for digits in (1, 2, 3):
        text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
        if float(text) != 0.0:
            return text
    return text
