"""`spectrosynth play` and `render --play`: when playback starts (a simulated render on a fake clock), the
player, the audio played against the file written (through a fake output stream, no sound card), Ctrl-C,
the one-line errors, and one real play through PortAudio into ALSA's `file` plugin."""

import io
import os
import random
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from spectrosynth import playback
from spectrosynth.cli import app
from spectrosynth.playback import MARGIN, OutputDevice, Player, Schedule

runner = CliRunner()
SEG = 5.12


def cli(*args, **kwargs):
    return runner.invoke(app, [*map(str, args)], **kwargs)


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part"]


@pytest.fixture
def model_args(tiny_model):
    return ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32", "--steps", "2"]


# --------------------------------------------------------------------------------------------------------
# When playback starts: a render simulated on a fake clock, as the pipeline delivers audio


def simulate(speeds, steps=20, trim=2.0, vocoder=0.05):
    """A render of len(speeds) segments, segment k at speeds[k] x real time, on a fake clock: the sampler's
    progress after every step, then the vocoder (`vocoder` of the segment's time); as StreamingVocoder
    does, segment k's audio is ready once segment k + 1 has been rendered, and the last two at the end. The
    song is `trim` seconds shorter than its segments (--tail). Returns (when playback started, the earliest
    start that would never have run dry, the deliveries that came after the playhead needed them)."""
    count = len(speeds)
    rendered_total = count * SEG
    total = rendered_total - trim
    now = [0.0]
    schedule = Schedule(total, rendered_total, clock=lambda: now[0])
    schedule.begin()
    started = None
    arrivals = []  # (wall time, song time where the audio starts)

    def check():
        nonlocal started
        if started is None and schedule.ready():
            started = now[0]

    for k, speed in enumerate(speeds):
        wall = SEG / speed
        for i in range(steps):
            now[0] += wall * (1 - vocoder) / steps
            schedule.rendered(k * SEG + SEG * (i + 1) / steps)
            check()
        now[0] += wall * vocoder
        for j in ([k - 1] if k else []) + ([k] if k == count - 1 else []):
            arrivals.append((now[0], j * SEG))
            schedule.delivered(min(total, (j + 1) * SEG))
            check()
    schedule.finished()
    check()
    earliest = max(t - x for t, x in arrivals)
    late = [(t, x) for t, x in arrivals if t > started + x + 1e-9]
    return started, earliest, late, now[0]


@pytest.mark.parametrize("speed", [1.3, 1.5, 3.0, 20.0])
@pytest.mark.parametrize("segments", [2, 6, 70])
def test_faster_than_real_time_plays_with_the_first_audio(speed, segments):
    started, earliest, late, _ = simulate([speed] * segments)
    first_audio = 2 * SEG / speed  # segment 0's audio waits for segment 1
    assert started == pytest.approx(first_audio) and started == pytest.approx(earliest) and late == []


@pytest.mark.parametrize("speed", [0.1, 0.3, 0.5, 0.8, 1.0, 1.1, 1.2])
@pytest.mark.parametrize("segments", [1, 2, 3, 6, 20, 70])
def test_slower_starts_late_enough_never_to_run_dry(speed, segments):
    started, earliest, late, end = simulate([speed] * segments)
    assert late == []  # every segment's audio came before the playhead needed it
    assert started >= earliest
    # the cost of the margin: a little later than the latest safe start, never more than a fifth of the render
    assert started - earliest <= 0.2 * end


def test_a_lasting_slowdown_within_the_margin_and_jitter_never_run_dry():
    for speed in (0.3, 0.6, 0.9, 1.5, 3.0):
        for segments in (6, 20, 70):
            third = segments // 3
            speeds = [speed] * third + [speed * 0.85] * (segments - third)  # 15 % slower after a third
            assert simulate(speeds)[2] == []
    rng = random.Random(0)
    for _ in range(200):
        speed, segments = rng.uniform(0.1, 3.0), rng.randint(1, 70)
        assert simulate([speed * rng.uniform(0.9, 1.1) for _ in range(segments)])[2] == []


def test_a_slowdown_beyond_the_margin_can_run_dry():
    """What the margin does not cover: a render that slows by 40 % once it has started playing."""
    speeds = [0.9] * 6 + [0.9 * 0.6] * 14
    assert simulate(speeds)[2] != []
    assert MARGIN == 0.2


def test_nothing_ready_nothing_measured():
    now = [0.0]
    schedule = Schedule(20.0, 20.48, clock=lambda: now[0])
    assert not schedule.ready() and schedule.speed() == 0.0 and schedule.wait() is None
    schedule.begin()
    now[0] = 5.0
    schedule.rendered(10.24)  # 2x real time, but no audio yet
    assert schedule.speed() == pytest.approx(10.24 / 5) and not schedule.ready()
    schedule.delivered(5.12)
    assert schedule.lag == pytest.approx(10.24) and schedule.ready()
    schedule = Schedule(3.0, 5.12, clock=lambda: now[0])
    schedule.finished()  # all the audio is there: play, however slow
    assert schedule.ready()


def test_the_wait_estimate_shrinks_to_the_start():
    now = [0.0]
    schedule = Schedule(60.0, 61.44, clock=lambda: now[0])  # 12 segments at 0.5x real time
    schedule.begin()
    waits = []
    for k in range(12):
        now[0] += SEG / 0.5
        schedule.rendered((k + 1) * SEG)
        if k:
            schedule.delivered(k * SEG)
        waits.append((now[0], schedule.wait(), schedule.ready()))
    start = next(t for t, _, ready in waits if ready)
    for t, wait, ready in waits[1:]:
        if not ready:  # the estimate is a little early (it ignores the audio still to come), never late
            assert t + wait <= start + 1e-6 and t + wait >= start - 2 * SEG / 0.5


# --------------------------------------------------------------------------------------------------------
# The player, with a fake stream


class FakeStream:
    """Stands in for sounddevice.OutputStream (playback.open_stream's result): once started, a thread
    pulls blocks from `fill` as a device does, `speed` times faster than real time, and keeps what it got;
    after the last block it calls `finished`. abort() stops it at once."""

    def __init__(self, samplerate, channels, device, fill, finished, latency, block=500, speed=50.0):
        self.samplerate, self.channels, self.device, self.latency = samplerate, channels, device, latency
        self.fill, self.finished, self.block, self.speed = fill, finished, block, speed
        self.blocks = []
        self.events = []
        self._stop = threading.Event()
        self._thread = None

    @property
    def player(self) -> Player:
        return self.fill.__self__

    def start(self):
        self.events.append("start")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            out = np.zeros((self.block, self.channels), np.float32)
            more = self.fill(out)
            self.blocks.append(out.copy())
            if not more:
                break
            time.sleep(self.block / self.samplerate / self.speed)
        self.finished()

    def abort(self):
        self.events.append("abort")
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.pulled_after_abort = len(self.blocks)

    def close(self):
        self.events.append("close")

    def played(self) -> np.ndarray:
        """Everything sent to the device, dropouts' silence taken out again (the player records where)."""
        out = np.concatenate(self.blocks) if self.blocks else np.zeros((0, self.channels), np.float32)
        kept, at, pos = [], 0, 0  # at: audio frames so far, pos: position in `out`
        for before, silent in self.player.gaps:
            kept.append(out[pos : pos + before - at])
            pos += before - at + silent
            at = before
            assert not out[pos - silent : pos].any()
        kept.append(out[pos:])
        return np.concatenate(kept)


FAKE_DEVICES = [
    OutputDevice(0, "Built-in Output", "Core Audio", 2, 48000.0, True),
    OutputDevice(3, "USB Audio CODEC", "Core Audio", 2, 44100.0),
    OutputDevice(4, "USB Audio Interface", "Core Audio", 8, 48000.0),
]


@pytest.fixture
def fake_audio(monkeypatch):
    """A machine with three outputs and a fake PortAudio: every stream opened is kept in `streams`."""
    streams = []

    def open_stream(*args, **kwargs):
        streams.append(FakeStream(*args, **kwargs))
        return streams[-1]

    fake_sd = SimpleNamespace(
        check_output_settings=lambda **kwargs: None,
        get_portaudio_version=lambda: (1246720, "PortAudio V19 (fake)"),
        PortAudioError=RuntimeError,
    )
    monkeypatch.setattr(playback, "load_sounddevice", lambda: fake_sd)
    monkeypatch.setattr(playback, "output_devices", lambda: list(FAKE_DEVICES))
    monkeypatch.setattr(playback, "open_stream", open_stream)
    return streams


def test_player_plays_what_it_is_fed_in_order_clipped_and_then_stops():
    now = [0.0]
    player = Player(None, 1000, 2, total=3.0, rendered_total=5.12, clock=lambda: now[0])
    stream = FakeStream(1000, 2, None, player._fill, player._finished.set, 0.2, block=256, speed=1e6)
    player._stream = stream
    player.watch()
    blocks = [np.random.default_rng(i).uniform(-1.2, 1.2, (n, 2)).astype(np.float32) for i, n in
              enumerate((700, 1, 999, 1300))]  # fmt: skip
    for block in blocks:
        player.feed(block)
    assert not player.started  # no progress measured: no speed yet
    player.end()  # all there: start
    assert player.started
    player.wait()
    assert player.gaps == [] and player.played == 3000 == player.fed
    expected = np.clip(np.concatenate(blocks), -1, 1)
    played = np.concatenate(stream.blocks)
    assert np.array_equal(played[:3000], expected) and not played[3000:].any()
    assert len(played) == 12 * 256  # the last block filled up with silence
    assert player.status() == "played 0:03"


def test_a_dry_buffer_plays_silence_and_resumes_where_it_was():
    player = Player(None, 100, 1, total=2.0, rendered_total=5.12)
    out = np.ones((50, 1), np.float32)
    player._ended = False
    player.feed(np.full(30, 0.5, np.float32))
    assert player._fill(out) is True
    assert np.all(out[:30] == 0.5) and not out[30:].any()
    assert player.gaps == [(30, 20)]
    assert player._fill(out) is True and player.gaps == [(30, 70)]  # the same dropout, longer
    player.feed(np.full(80, 0.25, np.float32))
    player.end()
    assert player._fill(out) is True and np.all(out == 0.25)
    assert player._fill(out) is False and np.all(out[:30] == 0.25) and not out[30:].any()
    assert player.played == 110 and player.dropouts == 1
    assert "ran dry 1 time(s), 0.7 s of silence" in player.summary()


# --------------------------------------------------------------------------------------------------------
# play SONG OUT against render SONG OUT, through the fake stream


def sndfile_int16(audio: np.ndarray, rate: int) -> np.ndarray:
    """Float samples quantised to 16 bits exactly as the WAV writer does it (libsndfile's own conversion)."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, subtype="PCM_16", format="WAV")
    buffer.seek(0)
    return sf.read(buffer, dtype="int16", always_2d=True)[0]


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--duration", "12", "--gain", "-4"],
        ["--channels", "2", "--duration", "8", "-r", "44100", "--clip", "clamp"],  # it goes over 0 dBFS
        ["--start", "10", "--duration", "6", "--clip", "clamp"],
    ],
)
def test_play_writes_the_file_render_writes_and_plays_its_samples(
    tmp_path, waltz, model_args, fake_audio, options
):
    played_wav, rendered_wav = tmp_path / "played.wav", tmp_path / "rendered.wav"
    result = cli("play", waltz, played_wav, *model_args, *options)
    assert result.exit_code == 0, result.output
    assert cli("render", waltz, rendered_wav, *model_args, *options).exit_code == 0
    assert played_wav.read_bytes() == rendered_wav.read_bytes()  # byte for byte
    assert "playing on 0 'Built-in Output' (Core Audio)" in result.stderr and "played" in result.stderr
    [stream] = fake_audio
    file, rate = sf.read(rendered_wav, dtype="int16", always_2d=True)
    assert stream.samplerate == rate and stream.channels == file.shape[1] and stream.device == 0
    assert stream.events == ["start", "abort", "close"]  # abort(): after the end, a no-op for PortAudio
    played = stream.played()
    tail = played[len(file) :]
    assert not tail.any() and len(tail) < stream.block  # the last block filled up with silence
    assert np.array_equal(sndfile_int16(played[: len(file)], rate), file)  # after the same 16-bit rounding
    assert leftovers(tmp_path) == []


def test_played_float_samples_equal_a_float_file(tmp_path, waltz, model_args, fake_audio):
    out = tmp_path / "float.wav"
    result = cli("render", waltz, out, *model_args, "--play", "--bit-depth", "32", "--duration", "9",
                 "--channels", "2", "--gain", "3", "--clip", "clamp",
                 "--output-device", "usb audio codec")  # fmt: skip
    assert result.exit_code == 0, result.output
    file, _ = sf.read(out, dtype="float32", always_2d=True)
    [stream] = fake_audio
    assert stream.device == 3
    assert np.array_equal(stream.played()[: len(file)], file)  # the same float32 samples


def test_a_level_decided_at_the_end_is_not_heard(tmp_path, waltz, model_args, fake_audio):
    """--normalize (like --loudness, and --clip rescale over full scale) needs the whole song: playback has
    the audio before that scale, the file the scaled audio."""
    out = tmp_path / "normalized.wav"
    result = cli("play", waltz, out, *model_args, "--duration", "6", "--normalize", "--bit-depth", "32")
    assert result.exit_code == 0, result.output
    file, _ = sf.read(out, dtype="float32", always_2d=True)
    played = fake_audio[0].played()[: len(file)]
    scale = np.abs(file).max() / np.abs(played).max()
    assert np.abs(file).max() == pytest.approx(10 ** (-1 / 20)) and scale != pytest.approx(1.0)
    np.testing.assert_allclose(played * scale, file, atol=1e-6)


def test_play_without_out_writes_nothing_and_plays_the_render(tmp_path, waltz, model_args, fake_audio,
                                                               monkeypatch):  # fmt: skip
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = cli("play", waltz, *model_args, "--duration", "7", "--bit-depth", "32")
    assert result.exit_code == 0, result.output
    assert "wrote" not in result.stderr and list(work.iterdir()) == [] and list(scratch.iterdir()) == []
    reference = tmp_path / "reference.wav"
    assert cli("render", waltz, reference, *model_args, "--duration", "7", "--bit-depth", "32").exit_code == 0
    file, _ = sf.read(reference, dtype="float32", always_2d=True)
    assert np.array_equal(fake_audio[0].played()[: len(file)], file)


def test_play_with_stems(tmp_path, waltz, model_args, fake_audio):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    result = cli("play", waltz, a / "mix.wav", *model_args, "--duration", "6", "--stems", a / "stems")
    assert result.exit_code == 0, result.output
    rendered = cli("render", waltz, b / "mix.wav", *model_args, "--duration", "6", "--stems", b / "stems")
    assert rendered.exit_code == 0
    assert (a / "mix.wav").read_bytes() == (b / "mix.wav").read_bytes()
    stems = sorted(p.name for p in (b / "stems").iterdir())
    assert stems and stems == sorted(p.name for p in (a / "stems").iterdir())
    for name in stems:
        assert (a / "stems" / name).read_bytes() == (b / "stems" / name).read_bytes()


def test_ctrl_c_stops_the_sound_and_the_render(tmp_path, waltz, model_args, fake_audio, monkeypatch):
    from spectrosynth.pipeline import Synthesizer

    real = Synthesizer.iter_parts

    def interrupted(self, *args, **kwargs):
        for i, mels in enumerate(real(self, *args, **kwargs)):
            if i == 3:  # segment 0's audio is playing by now
                assert fake_audio[0].events == ["start"]
                raise KeyboardInterrupt
            yield mels

    monkeypatch.setattr(Synthesizer, "iter_parts", interrupted)
    out = tmp_path / "a.wav"
    out.write_bytes(b"old take")
    # sampled, not taken from the segment cache: playback starts from the measured sampling speed
    result = cli("play", waltz, out, *model_args, "--force", "--duration", "25", "--no-cache")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert out.read_bytes() == b"old take" and leftovers(tmp_path) == []
    [stream] = fake_audio
    assert stream.events == ["start", "abort", "close"]
    assert len(stream.blocks) == stream.pulled_after_abort  # not a block more after the abort
    assert 0 < stream.player.played < round(25 * 16000)


def test_ctrl_c_while_the_rest_plays_keeps_the_finished_file(tmp_path, waltz, model_args, fake_audio,
                                                             monkeypatch):  # fmt: skip
    def interrupted_wait(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Player, "wait", interrupted_wait)
    out = tmp_path / "a.wav"
    result = cli("play", waltz, out, *model_args, "--duration", "6")
    assert result.exit_code == 130 and f"wrote {out}" in result.stderr
    assert sf.info(out).frames == 7 * 16000 and leftovers(tmp_path) == []
    assert fake_audio[0].events[-2:] == ["abort", "close"]


def test_progress_shows_what_is_playing(tmp_path, waltz, model_args, fake_audio):
    result = cli("play", waltz, *model_args, "--duration", "16")  # not a terminal: one line per segment
    lines = [line for line in result.stderr.splitlines() if "segment" in line]
    assert len(lines) == 4 and lines[0].endswith("buffering")
    assert lines[-1].split(", ")[-1].startswith(("playing 0:", "played 0:17"))


# --------------------------------------------------------------------------------------------------------
# Devices and errors: one line, no traceback


def test_list_devices(fake_audio):
    result = cli("play", "--list-devices")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "audio outputs (PortAudio V19 (fake)):",
        "  0  Built-in Output  (Core Audio, 2 channels, 48000 Hz, the default)",
        "  3  USB Audio CODEC  (Core Audio, 2 channels, 44100 Hz)",
        "  4  USB Audio Interface  (Core Audio, 8 channels, 48000 Hz)",
    ]


def one_line_error(result, code=1) -> str:
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "device,message",
    [
        ("7", "there is no output device 7; the output devices are 0 'Built-in Output' (Core Audio), 3 "),
        ("HDMI", "'HDMI': no output device has that name; the output devices are 0 'Built-in Output'"),
        ("usb", "'usb' matches 2 output devices: 3 'USB Audio CODEC' (Core Audio), 4 'USB Audio Interface'"),
    ],
)
def test_a_bad_output_device_is_one_line(tmp_path, waltz, model_args, fake_audio, device, message):
    for command in (["play", waltz], ["render", waltz, tmp_path / "a.wav", "--play"]):
        result = cli(*command, *model_args, "--output-device", device)
        assert message in one_line_error(result)
    assert fake_audio == [] and list(tmp_path.iterdir()) == []


def test_output_device_needs_play(tmp_path, waltz, model_args):
    assert "add --play" in one_line_error(cli("render", waltz, tmp_path / "a.wav", "--output-device", "0"), 2)


def test_no_output_device_at_all_is_one_line(tmp_path, waltz, model_args, monkeypatch):
    fake_sd = SimpleNamespace(
        query_devices=lambda: [{"name": "Mic", "hostapi": 0, "max_output_channels": 0,
                                "max_input_channels": 2, "default_samplerate": 48000.0}],
        query_hostapis=lambda: [{"name": "ALSA"}],
        default=SimpleNamespace(device=[0, -1]),
        PortAudioError=RuntimeError,
        get_portaudio_version=lambda: (1, "PortAudio (fake)"),
    )  # fmt: skip
    monkeypatch.setattr(playback, "load_sounddevice", lambda: fake_sd)
    for command in (
        ["play", waltz],
        ["play", "--list-devices"],
        ["render", waltz, tmp_path / "a.wav", "--play"],
    ):
        assert "no audio output device found" in one_line_error(cli(*command, *model_args))


def test_a_device_that_refuses_the_rate_is_one_line(waltz, model_args, fake_audio, monkeypatch):
    def refuse(**kwargs):
        raise RuntimeError("Invalid sample rate [PaErrorCode -9997]")

    monkeypatch.setattr(playback.load_sounddevice(), "check_output_settings", refuse)
    error = one_line_error(cli("play", waltz, *model_args, "-r", "22050"))
    assert "cannot play mono at 22050 Hz (Invalid sample rate [PaErrorCode -9997]); try -r 48000" in error


def test_a_device_that_fails_to_start_is_one_line(tmp_path, waltz, model_args, fake_audio, monkeypatch):
    def start(self):
        raise RuntimeError("Device unavailable [PaErrorCode -9985]")

    monkeypatch.setattr(FakeStream, "start", start)
    result = cli("play", waltz, tmp_path / "a.wav", *model_args, "--duration", "3")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    error = result.stderr.splitlines()[-1]  # after the progress: the render had begun
    assert error.startswith("spectrosynth: error: could not start playing on 0 'Built-in Output' (Core")
    assert list(tmp_path.iterdir()) == [] and fake_audio[0].events == ["abort", "close"]


class _NoPortAudio:
    """An import hook that fails as `import sounddevice` does without libportaudio."""

    def find_spec(self, name, path=None, target=None):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


def test_no_portaudio_is_one_line_saying_what_to_install(tmp_path, waltz, model_args, monkeypatch):
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoPortAudio(), *sys.meta_path])
    for command in (
        ["play", waltz],
        ["play", "--list-devices"],
        ["render", waltz, tmp_path / "a.wav", "--play"],
    ):
        error = one_line_error(cli(*command, *model_args))
        assert "PortAudio library not found" in error and "apt install libportaudio2" in error
    assert list(tmp_path.iterdir()) == []
    from spectrosynth import doctor

    section = doctor.probe_audio()
    assert section["portaudio"] is None and "apt install libportaudio2" in section["reason"]


def test_doctor_reports_portaudio_and_the_outputs(fake_audio):
    from spectrosynth import doctor

    section = doctor.probe_audio()
    assert section["portaudio"] == "PortAudio V19 (fake)" and len(section["outputs"]) == 3
    text = doctor.format_report({"audio": section})
    assert "output 0: Built-in Output (Core Audio, 2 channels, 48000 Hz, the default)" in " ".join(
        text.split()
    )


# --------------------------------------------------------------------------------------------------------
# One real play: PortAudio into ALSA's `file` plugin over its `null` sink


def _portaudio_and_alsa() -> str | None:
    """Why the real test cannot run here, or None."""
    try:
        import sounddevice  # noqa: F401
    except (OSError, ImportError) as e:
        return f"PortAudio is not available ({e}): apt install libportaudio2"
    if not sys.platform.startswith("linux"):
        return "ALSA is Linux's"
    import ctypes.util

    if ctypes.util.find_library("asound") is None:
        return "the ALSA library (libasound2) is not installed"
    return None


@pytest.mark.skipif(_portaudio_and_alsa() is not None, reason=str(_portaudio_and_alsa()))
def test_real_play_through_portaudio_into_alsa(tmp_path, waltz, tiny_model):
    """`spectrosynth play` through the real PortAudio, into ALSA's `file` plugin (which writes whatever
    reaches the device, raw) over its `null` sink. The player hands PortAudio float32 and the file plugin
    keeps the device's format, so the capture is float32 too, and equals the float WAV written, sample for
    sample, after PortAudio's own silence: it fills the whole ALSA buffer with silence before it starts
    (the buffer it asks for LATENCY, 0.2 s: 4000 frames at 16 kHz here, five periods of 800). After the
    audio come the zeros that
    fill up the last block, and, since the null sink takes audio as fast as it is given (it has no clock),
    the silence the player plays while it waits for the end of the render."""
    home = tmp_path / "home"
    home.mkdir()
    capture = tmp_path / "capture.raw"
    (home / ".asoundrc").write_text(
        f'pcm.!default {{\n  type file\n  slave.pcm "null"\n  file "{capture}"\n  format "raw"\n}}\n'
    )
    out = tmp_path / "song.wav"
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("ALSA_CONFIG_PATH", None)
    command = [sys.executable, "-m", "spectrosynth", "play", str(waltz), str(out), "--model", str(tiny_model),
               "--device", "cpu", "--steps", "2", "--duration", "4", "--bit-depth", "32"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "playing on 0 'default' (ALSA)" in result.stderr
    audio, rate = sf.read(out, dtype="float32")  # one segment: all of it is ready before playing starts
    assert rate == 16000 and len(audio) == 5 * 16000 and audio[0] != 0
    captured = np.fromfile(capture, np.float32)
    lead = int(np.flatnonzero(captured)[0])  # PortAudio's silence: one ALSA buffer
    assert 0 < lead <= 0.5 * rate
    assert np.array_equal(captured[lead : lead + len(audio)], audio)
    assert not captured[lead + len(audio) :].any()
