"""Hearing a song while it renders (`spectrosynth play`, `render --play`): the audio goes to a sound card
through PortAudio (the `sounddevice` package) as it is made.

Three parts:

* **When to start** (`Schedule`, pure, with an injectable clock). Playback starts as soon as the rest of the
  song can no longer run dry, from the rendering speed measured as the render goes. With

  - D the seconds of audio the song will have, P the seconds the sampler renders (whole 5.12 s segments),
  - p the seconds rendered so far (the sampler's progress, after every diffusion step), a the seconds of
    audio ready to play,
  - r = p / (wall seconds since rendering began), the measured speed, taken at r / (1 + MARGIN); segments
    taken from the segment cache before the first one sampled (the unchanged start of an edited song)
    count in p but not in r: r is measured from the first sampled step on, over what was rendered since,
  - L the pipeline's lag: how far rendering must get past a moment of the song before that moment's audio
    is ready, measured (the largest p - a seen when audio arrives: 10.24 s, as a segment's audio waits for
    the next segment, the vocoder's look-ahead; the resampler adds a few samples),

  playback started now reaches song time x after x seconds, and the audio at x is ready once rendering
  reaches min(x + L, P), (min(x + L, P) - p) / r seconds from now. Playback starts when that is at least
  SLACK seconds early for every x from a to D (the condition is piecewise linear in x, so it is checked at
  x = a, at x = P - L and at D), or when all the audio is ready. MARGIN = 0.2: the speed may fall 20 % below
  its average so far without a dropout; SLACK = 0.25 s covers the vocoder's own time after each segment and
  thread scheduling. So a render at 1.26x real time or faster plays from its first audio (after two
  segments: the first segment's audio waits for the second); a slower one waits, about (1 - r') of the song
  for a long one.

* **The player** (`Player`): a queue of blocks the render loop fills (`feed`, from `AudioWriter.monitor`)
  and PortAudio's callback drains (`_fill`), without a lock: deque appends and pops are atomic, and the
  callback never waits for the render. Should the render fall behind after all, the callback plays silence
  until audio comes again (a dropout, counted and reported; nothing is skipped). The samples are float32
  (PortAudio converts them where the device wants integers), at the output's rate and channels: what the
  file gets, times --gain and clipped to full scale, but before --normalize, --loudness and --clip rescale,
  which need the whole song.

* **The device**: `output_devices`, `pick_output_device`, `check_device`, and the one call that opens a
  stream, `open_stream`, which tests replace with a fake stream (no sound card needed).

Without the PortAudio library `import sounddevice` raises OSError (Linux: apt install libportaudio2; the
macOS and Windows wheels bundle it): `load_sounddevice` turns that into a one-line PlaybackError.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from spectrosynth.errors import PlaybackError

MARGIN = 0.2  # the measured speed is taken 20 % lower
SLACK = 0.25  # seconds: every moment's audio must be expected at least this much before it plays
LATENCY = 0.2  # seconds of audio PortAudio buffers ahead of the speaker: room for the render's GIL use
DTYPE = "float32"  # the samples handed to PortAudio

INSTALL_HINT = (
    "install the PortAudio library: apt install libportaudio2 (Debian, Ubuntu), dnf install portaudio "
    "(Fedora); on macOS and Windows it comes inside the sounddevice wheel: pip install --force-reinstall "
    "sounddevice"
)
LIST_HINT = "spectrosynth play --list-devices lists the outputs"


def load_sounddevice():
    """The sounddevice module, or a PlaybackError saying what to install."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice's import raises OSError when it cannot load libportaudio
        raise PlaybackError(f"playing needs PortAudio, which was not found ({e}); {INSTALL_HINT}") from None
    except ImportError:
        raise PlaybackError(
            "playing needs the sounddevice package: pip install sounddevice (and on Linux apt install "
            "libportaudio2)"
        ) from None
    return sounddevice


def portaudio_version() -> str:
    """PortAudio's version text, e.g. 'PortAudio V19.6.0-devel, revision 396fe4b'."""
    return str(load_sounddevice().get_portaudio_version()[1])


# ------------------------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True)
class OutputDevice:
    """An audio output as PortAudio lists it."""

    index: int
    name: str
    hostapi: str
    channels: int  # the most output channels it takes
    samplerate: float  # its default rate
    default: bool = False  # PortAudio's default output

    def __str__(self) -> str:
        return f"{self.index} '{self.name}' ({self.hostapi})"

    def describe(self) -> str:
        """One line for --list-devices."""
        mark = ", the default" if self.default else ""
        return f"{self.index:>3}  {self.name}  ({self.hostapi}, {self.channels} channels, " \
               f"{self.samplerate:g} Hz{mark})"  # fmt: skip


def _portaudio_error(sd) -> type[BaseException]:
    return getattr(sd, "PortAudioError", RuntimeError)


def output_devices() -> list[OutputDevice]:
    """Every device PortAudio can play to, in its order."""
    sd = load_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default = sd.default.device[1]
    except _portaudio_error(sd) as e:
        raise PlaybackError(f"PortAudio cannot list the audio devices ({e}); {INSTALL_HINT}") from None
    default = default if isinstance(default, int) else -1
    found = []
    for index, device in enumerate(devices):
        if device["max_output_channels"] <= 0:
            continue
        api = hostapis[device["hostapi"]]["name"] if device["hostapi"] < len(hostapis) else "?"
        found.append(OutputDevice(index, device["name"], api, int(device["max_output_channels"]),
                                  float(device["default_samplerate"]), index == default))  # fmt: skip
    return found


def _listing(devices: list[OutputDevice]) -> str:
    return ", ".join(str(d) for d in devices)


def pick_output_device(spec: str | None) -> OutputDevice:
    """The output `spec` names (--output-device: an index, or a name or a unique part of one, any case), or
    the default output; a PlaybackError that lists the outputs otherwise."""
    devices = output_devices()
    if not devices:
        raise PlaybackError(
            "no audio output device found: PortAudio lists none (no sound card, or no sound server such as "
            "PulseAudio or PipeWire running); render to a file instead, without --play"
        )
    if spec is None or not spec.strip():
        default = [d for d in devices if d.default]
        if default:
            return default[0]
        raise PlaybackError(f"there is no default audio output; choose one with --output-device NAME|INDEX: "
                            f"{_listing(devices)}")  # fmt: skip
    spec = spec.strip()
    if spec.isdigit():
        index = int(spec)
        match = [d for d in devices if d.index == index]
        if match:
            return match[0]
        raise PlaybackError(f"--output-device {index}: there is no output device {index}; the output devices "
                            f"are {_listing(devices)}")  # fmt: skip
    wanted = spec.casefold()
    exact = [d for d in devices if d.name.casefold() == wanted]
    if len(exact) == 1:
        return exact[0]
    match = exact or [d for d in devices if wanted in d.name.casefold()]
    if len(match) == 1:
        return match[0]
    if match:
        raise PlaybackError(f"--output-device {spec!r} matches {len(match)} output devices: "
                            f"{_listing(match)}; give its index or a longer name")  # fmt: skip
    raise PlaybackError(f"--output-device {spec!r}: no output device has that name; the output devices are "
                        f"{_listing(devices)} ({LIST_HINT})")  # fmt: skip


def check_device(device: OutputDevice, samplerate: int, channels: int) -> None:
    """Fail at once, before a long render, when `device` refuses the output's rate or channels."""
    what = "stereo" if channels == 2 else "mono"
    if channels > device.channels:
        raise PlaybackError(f"output device {device} has {device.channels} channel(s), too few for {what}; "
                            "choose another --output-device or --channels 1")  # fmt: skip
    sd = load_sounddevice()
    try:
        sd.check_output_settings(device=device.index, channels=channels, dtype=DTYPE, samplerate=samplerate)
    except _portaudio_error(sd) as e:
        other = " or --channels 2" if channels == 1 and device.channels >= 2 else ""
        raise PlaybackError(
            f"output device {device} cannot play {what} at {samplerate} Hz ({e}); try "
            f"-r 48000{other}, or another --output-device ({LIST_HINT})"
        ) from None


def open_stream(
    samplerate: int,
    channels: int,
    device: int | None,
    fill: Callable[[np.ndarray], bool],
    finished: Callable[[], None],
    latency: float = LATENCY,
) -> Any:
    """An output stream, not started: the one place spectrosynth calls PortAudio to play (tests replace it).

    PortAudio calls `fill(out)` from its own thread with a float32 array (frames, channels) to fill; fill
    returns False once the audio has ended (this block is the last), then PortAudio plays what it holds and
    calls `finished()`. The stream has start(), abort() (stop at once) and close()."""
    sd = load_sounddevice()

    def callback(outdata, frames, when, status) -> None:
        if not fill(outdata):
            raise sd.CallbackStop

    try:
        return sd.OutputStream(samplerate=samplerate, channels=channels, dtype=DTYPE, device=device,
                               latency=latency, callback=callback, finished_callback=finished)  # fmt: skip
    except _portaudio_error(sd) as e:
        raise PlaybackError(f"could not open audio output {device if device is not None else 'default'} "
                            f"({e}); is another program using it? ({LIST_HINT})") from None  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# When to start


class Schedule:
    """When playback may start without running dry (the rule is in the module docstring).

    `total`: the seconds of audio the song will have (D); `rendered_total`: the seconds the sampler renders
    (P, whole segments). Tell it `begin()` when rendering starts, `rendered(p)` as the sampler progresses,
    `delivered(a)` as audio becomes ready and `finished()` when all of it is; `ready()` says whether to
    start now. `clock` gives the time in seconds (time.monotonic; tests pass a fake one).
    """

    def __init__(
        self,
        total: float,
        rendered_total: float,
        *,
        margin: float = MARGIN,
        slack: float = SLACK,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.rendered_total = float(total), float(rendered_total)
        self.margin, self.slack, self.clock = margin, slack, clock
        self.began: float | None = None
        self.progress = 0.0  # p: seconds rendered
        self.available = 0.0  # a: seconds of audio ready
        self.lag: float | None = None  # L, measured
        self.done = False  # all the audio is ready
        self._base = (0.0, None)  # (progress, clock) the speed is measured from: past the cached start
        self._sampled = False  # a sampled step has been seen

    def begin(self) -> None:
        self.began = self.clock()
        self._base = (0.0, self.began)

    def rendered(self, seconds: float, cached: bool = False) -> None:
        """`seconds` of the song rendered in all; `cached`: this advance came from the segment cache."""
        self.progress = max(self.progress, float(seconds))
        if not cached:
            self._sampled = True
        elif not self._sampled:  # the cached start took no sampling: the speed is measured from here
            self._base = (self.progress, self.clock())

    def delivered(self, seconds: float) -> None:
        """`seconds` of audio are ready in all (more than before)."""
        seconds = float(seconds)
        if seconds > self.available:
            lag = self.progress - self.available
            self.lag = lag if self.lag is None else max(self.lag, lag)
            self.available = seconds

    def finished(self) -> None:
        self.done = True

    def speed(self) -> float:
        """Seconds of song rendered per wall second since `begin()` (or since the segments taken from the
        cache before the first sampled one)."""
        progress, since = self._base
        if self.began is None or since is None or not self._sampled:
            return 0.0
        elapsed = self.clock() - since
        return (self.progress - progress) / elapsed if elapsed > 0 else 0.0

    def _checks(self) -> list[float]:
        """The song times x at which the rule is checked: a, P - L and D (within [a, D])."""
        a, end = self.available, self.total
        return sorted({x for x in (a, self.rendered_total - self.lag, end) if a <= x <= end})

    def _late(self, x: float, speed: float) -> float:
        """How many seconds after the playhead reaches song time x its audio is expected (<= -slack: safe)."""
        needed = min(x + self.lag, self.rendered_total)
        return max(0.0, needed - self.progress) / speed + self.slack - x

    def ready(self) -> bool:
        if self.done:
            return True
        if self.available <= 0 or self.lag is None:
            return False
        speed = self.speed() / (1 + self.margin)
        if speed <= 0:
            return False
        return all(self._late(x, speed) <= 0 for x in self._checks())

    def wait(self) -> float | None:
        """Estimated seconds until `ready()`, at the speed measured so far (None: not known yet)."""
        if self.ready():
            return 0.0
        speed = self.speed()
        if self.lag is None or speed <= 0:
            return None
        safe = speed / (1 + self.margin)
        # each check x is satisfied once rendering has gone (late * safe) further, at `speed`
        return max(self._late(x, safe) * safe / speed for x in self._checks())


# ------------------------------------------------------------------------------------------------------
# The player


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Player:
    """Plays a render's audio on `device` as it is made; use as a context manager around the render.

    `feed` the output-rate samples as they come (AudioWriter.monitor), `watch` the render's progress, `end()`
    when all the audio is there, then `wait()` until it has played. Leaving the block on an error or Ctrl-C
    stops the sound at once. `announce` is called with a line when playback starts.
    """

    def __init__(
        self,
        device: OutputDevice | None,
        samplerate: int,
        channels: int,
        total: float,
        rendered_total: float,
        *,
        latency: float = LATENCY,
        clock: Callable[[], float] = time.monotonic,
        announce: Callable[[str], None] | None = None,
    ):
        self.device, self.samplerate, self.channels, self.latency = device, samplerate, channels, latency
        self.schedule = Schedule(total, rendered_total, clock=clock)
        self.clock, self.announce = clock, announce
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._block: np.ndarray | None = None  # the block being played, from _offset on
        self._offset = 0
        self._ended = False  # every block has been queued
        self._finished = threading.Event()  # PortAudio has played the last block
        self._dry = False  # in a dropout
        self._stream = None
        self.fed = 0  # frames queued
        self.played = 0  # frames handed to PortAudio (silence of dropouts not counted)
        self.gaps: list[tuple[int, int]] = []  # dropouts: (frames played before it, frames of silence)
        self.started_at: float | None = None  # clock() when playback started

    # -- the render's side ------------------------------------------------------------------------------

    def __enter__(self) -> Player:
        index = None if self.device is None else self.device.index
        self._stream = open_stream(self.samplerate, self.channels, index, self._fill, self._finished.set,
                                   self.latency)  # fmt: skip
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the sound at once (if it still plays) and release the device."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
            finally:
                stream.close()

    def watch(self, progress: Callable[[Any], None] | None = None) -> Callable[[Any], None]:
        """The render's progress callback: starts the clock now, and passes each `pipeline.Progress` on to
        `progress` (the display) too."""
        self.schedule.begin()

        def callback(p) -> None:
            if progress is not None:
                progress(p)
            self.schedule.rendered(p.fraction * self.schedule.rendered_total, getattr(p, "cached", False))
            self._check()

        return callback

    def feed(self, samples: np.ndarray) -> None:
        """The next samples at the output rate, (n,) or (n, channels), clipped to full scale here."""
        block = np.clip(np.asarray(samples, np.float32).reshape(-1, self.channels), -1.0, 1.0)
        if len(block):
            self._queue.append(block)
            self.fed += len(block)
            self.schedule.delivered(self.fed / self.samplerate)
            self._check()

    def end(self) -> None:
        """All the audio has been fed: start now if not yet."""
        self._ended = True
        self.schedule.finished()
        self._check()

    def wait(self) -> None:
        """Until the last sample has played (Ctrl-C interrupts it)."""
        while not self._finished.wait(0.1):
            pass

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def _check(self) -> None:
        if self.started_at is None and self._stream is not None and self.schedule.ready():
            self.started_at = self.clock()
            try:
                self._stream.start()
            except Exception as e:  # sounddevice.PortAudioError: the device went away, or is busy
                where = self.device if self.device is not None else "the default output"
                raise PlaybackError(f"could not start playing on {where} ({e}); {LIST_HINT}") from None
            if self.announce is not None:
                self.announce(self.start_line())

    # -- PortAudio's side (its own thread: never waits) --------------------------------------------------

    def _fill(self, out: np.ndarray) -> bool:
        ended = self._ended  # read first: when True, every block is already queued
        frames, done = len(out), 0
        while done < frames:
            if self._block is None or self._offset >= len(self._block):
                try:
                    self._block, self._offset = self._queue.popleft(), 0
                except IndexError:
                    self._block = None
                    break
            n = min(frames - done, len(self._block) - self._offset)
            out[done : done + n] = self._block[self._offset : self._offset + n]
            self._offset += n
            done += n
        self.played += done
        if done < frames:
            out[done:] = 0
            if ended:
                return False
            if not self._dry or not self.gaps:
                self.gaps.append((self.played, 0))
            at, silent = self.gaps[-1]
            self.gaps[-1] = (at, silent + frames - done)
            self._dry = True
        else:
            self._dry = False
        if ended and not self._queue and (self._block is None or self._offset >= len(self._block)):
            return False
        return True

    # -- what it says ------------------------------------------------------------------------------------

    @property
    def dropouts(self) -> int:
        return len(self.gaps)

    def position(self) -> float:
        """Seconds of the song handed to the device."""
        return self.played / self.samplerate

    def status(self) -> str:
        """For the progress display: buffering (and when it should start), playing where, or played."""
        total = self.schedule.total
        if self.started_at is None:
            wait = self.schedule.wait()
            return "buffering" + (f", plays in ~{_clock(wait + 0.5)}" if wait else "")
        if self._finished.is_set():
            text = f"played {_clock(total)}"
        else:
            text = f"playing {_clock(self.position())}/{_clock(total)}"
        if self.dropouts:
            text += f", {self.dropouts} dropout{'s' if self.dropouts > 1 else ''}"
        return text

    def start_line(self) -> str:
        where = f" on {self.device}" if self.device is not None else ""
        ahead = self.schedule.available
        began = self.schedule.began if self.schedule.began is not None else self.started_at
        return (f"playing{where} after {self.started_at - began:.1f} s of rendering: {ahead:.1f} s of audio "
                f"ready, rendering at {self.schedule.speed():.2f}x real time")  # fmt: skip

    def summary(self) -> str:
        text = f"played {self.position():.1f} s"
        if self.dropouts:
            silence = sum(frames for _, frames in self.gaps) / self.samplerate
            text += (f"; it ran dry {self.dropouts} time(s), {silence:.1f} s of silence in all, as rendering "
                     "fell behind (the file is not affected)")  # fmt: skip
        return text
