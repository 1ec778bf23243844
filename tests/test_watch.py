"""`render --watch`: each complete new version of the MIDI file is rendered again (spectrosynth.watch), a half
written one never; what changed is said; Ctrl-C ends it with exit code 130."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from midi_builder import Note, Song, Track
from test_play import fake_audio  # noqa: F401 - a fixture: a fake PortAudio
from typer.testing import CliRunner

from spectrosynth.cli import app
from spectrosynth.cli.render import describe_changes
from spectrosynth.midi import read_midi
from spectrosynth.tokens import prepare
from spectrosynth.watch import read_version, versions

runner = CliRunner()


def song(last: float = 17.0, tracks: int = 3) -> Song:
    """Violin, bass and drums over four segments; `last`: when the bass's last note starts."""
    return Song([
        Track([Note(60, 0.0, 3.0), Note(64, 6.0, 12.0), Note(67, 14.0, 19.5)], program=40),
        Track([Note(40, 0.0, 5.0), Note(43, 8.0, 11.0), Note(45, last, 19.0)], program=32, channel=1),
        Track([Note(36, 0.5, 0.6), Note(38, 10.0, 10.1), Note(36, 18.0, 18.1)], channel=9),
    ][:tracks])  # fmt: skip


class Watcher:
    """versions() in a thread, with a stop event: what it yields goes to `got`."""

    def __init__(self, path, last: bytes, quiet_ms: int = 100):
        self.got: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.notes: list[str] = []
        kwargs = {"last": last, "quiet_ms": quiet_ms, "stop": self.stop, "note": self.notes.append}
        self.thread = threading.Thread(target=self._run, args=(path,), kwargs=kwargs, daemon=True)
        self.thread.start()
        time.sleep(0.5)  # the watch is set up

    def _run(self, path, **kwargs):
        for version in versions(path, **kwargs):
            self.got.put(version.data)

    def next(self, timeout: float = 10.0) -> bytes:
        return self.got.get(timeout=timeout)

    def nothing(self, wait: float = 1.0) -> bool:
        try:
            self.got.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


def test_each_complete_version_once_and_never_a_half_written_one(tmp_path):
    path = tmp_path / "song.mid"
    first, second, third = (song(last=t).to_bytes() for t in (17.0, 17.5, 16.0))
    path.write_bytes(first)
    watcher = Watcher(path, last=first)
    try:
        assert watcher.nothing(0.5)  # the version already rendered is not new
        with open(path, "wb") as f:  # half a file, a pause longer than the quiet time, then the rest
            f.write(second[: len(second) // 2])
            f.flush()
            time.sleep(1.0)
            f.write(second[len(second) // 2 :])
        assert watcher.next() == second
        assert watcher.nothing(0.8)
        # saved the way most programs save: another file, renamed over the name
        (tmp_path / ".song.mid.tmp").write_bytes(third)
        os.replace(tmp_path / ".song.mid.tmp", path)
        assert watcher.next() == third
        path.write_bytes(third)  # saved again without a change
        (tmp_path / "other.mid").write_bytes(first)  # another file in the folder
        assert watcher.nothing(0.8)
        for i in range(5):  # a file written in pieces, faster than the quiet time: only its end is read
            with open(path, "ab" if i else "wb") as f:
                f.write(first[i * len(first) // 5 : (i + 1) * len(first) // 5])
            time.sleep(0.03)
        assert watcher.next() == first and watcher.nothing(0.8)
    finally:
        watcher.close()
    assert watcher.notes == []


def test_a_file_that_never_parses_is_given_up_until_the_next_save(tmp_path):
    path = tmp_path / "song.mid"
    good = song().to_bytes()
    path.write_bytes(good)
    stop = threading.Event()
    notes: list[str] = []
    got: list[bytes] = []

    def run():
        for version in versions(path, last=good, quiet_ms=50, retry_s=0.5, stop=stop, note=notes.append):
            got.append(version.data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.3)
    path.write_bytes(good[:-7])  # truncated for good
    time.sleep(1.5)
    assert got == [] and len(notes) == 1
    assert "truncated" in notes[0] and "waiting for the next save" in notes[0]
    path.write_bytes(song(last=16.0).to_bytes())
    time.sleep(1.0)
    stop.set()
    thread.join(timeout=5)
    assert got == [song(last=16.0).to_bytes()]


def test_read_version_wants_a_whole_readable_file(tmp_path):
    path = tmp_path / "song.mid"
    assert read_version(path, "song.mid") == (None, "song.mid is not there (being replaced?)")
    path.write_bytes(song().to_bytes()[:40])
    version, why = read_version(path, "song.mid")
    assert version is None and "truncated" in why
    path.write_bytes(song().to_bytes())
    version, why = read_version(path, "song.mid")
    assert why is None and len(version.score.tracks) == 3


def test_what_changed_is_said_by_segment_and_track(tmp_path):
    def parsed(version: Song):
        score = read_midi(version.to_bytes(), name="s.mid")
        return score, prepare(score)

    old_score, old_song = parsed(song())
    new_score, new_song = parsed(song(last=17.5))
    assert describe_changes(old_score, new_score, old_song, new_song) == "segment 4 of 4 changed (track 2)"
    two = Song([Track([Note(60, 0.0, 3.0), Note(64, 6.5, 12.0), Note(67, 14.0, 19.5)], program=40),
                *song(last=17.5).tracks[1:]])  # fmt: skip
    score, prepared = parsed(two)
    said = describe_changes(old_score, score, old_song, prepared)
    assert said == "segments 2, 4 of 4 changed (tracks 1, 2)"
    assert describe_changes(old_score, old_score, old_song, old_song) == "no segment's notes changed"


@pytest.mark.slow
def test_render_watch_renders_each_save_and_stops_on_ctrl_c(tmp_path, tiny_model):
    midi = tmp_path / "song.mid"
    midi.write_bytes(song().to_bytes())
    out = tmp_path / "out.wav"
    model = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32", "--steps", "2"]
    env = {**os.environ, "SPECTROSYNTH_CACHE": str(tmp_path / "cache")}  # torch's threads as in this process
    command = [sys.executable, "-m", "spectrosynth", "render", str(midi), str(out), "--watch", "--mute", "3",
               *model]  # fmt: skip
    # Ctrl-C as a terminal sends it: SIGINT handled as Python does by default, even where this test runs as a
    # background job (which starts with SIGINT ignored, and Python then keeps ignoring it)
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    watch = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=restore)
    lines: queue.Queue = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in watch.stderr], daemon=True).start()

    def wait_for(text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert watch.poll() is None, "\n".join(seen)
                continue
            seen.append(line.rstrip())
            if text in line:
                return line
        raise AssertionError(f"no {text!r} in:\n" + "\n".join(seen))

    try:
        wait_for("watching")
        first = out.read_bytes()
        new = song(last=17.5).to_bytes()
        with open(midi, "wb") as f:  # half, a pause, the rest: only the whole file is rendered
            f.write(new[: len(new) // 2])
            f.flush()
            time.sleep(1.2)
            f.write(new[len(new) // 2 :])
        line = wait_for("re-rendered")
        assert "song.mid: segment 4 of 4 changed (track 2); re-rendered in" in line
        assert any("wrote" in s and "3 of 4 segments from the cache" in s for s in seen), seen
        assert not [s for s in seen if "error" in s]
        midi.write_bytes(song(last=17.5, tracks=2).to_bytes())  # --mute 3 no longer fits: an error line
        wait_for("--mute 3: the song has 2 tracks")
        time.sleep(0.5)
        assert watch.poll() is None
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 130
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written
    again = out.read_bytes()
    assert again != first
    fresh = tmp_path / "fresh.wav"
    midi.write_bytes(new)
    result = runner.invoke(app, ["render", str(midi), str(fresh), "--mute", "3", "--no-cache", *model])
    assert result.exit_code == 0, result.output
    assert fresh.read_bytes() == again


def test_watch_needs_files(tmp_path, tiny_model):
    midi = tmp_path / "song.mid"
    midi.write_bytes(song().to_bytes())
    result = runner.invoke(app, ["render", "-", str(tmp_path / "a.wav"), "--watch"], input=midi.read_bytes())
    assert result.exit_code == 2 and "--watch" in result.output
    result = runner.invoke(app, ["render", str(midi), "-", "--format", "wav", "--watch"])
    assert result.exit_code == 2 and "--watch" in result.output


def test_play_watch_plays_each_new_version_and_stops_the_old_one(
    tmp_path,
    tiny_model,
    fake_audio,  # noqa: F811 - test_play's fixture
    monkeypatch,
):
    """`play --watch` with the file watch replaced by one new version: the first version plays until the
    second starts rendering, which then plays (through a fake PortAudio)."""
    from spectrosynth import watch
    from spectrosynth.watch import Version

    midi = tmp_path / "song.mid"
    midi.write_bytes(song().to_bytes())
    new = song(last=17.5).to_bytes()
    streams_when_saved = []

    def one_save(path, *, last, label, note, **kwargs):
        assert last == midi.read_bytes() and label == "song.mid"
        streams_when_saved.append([list(s.events) for s in fake_audio])
        yield Version(new, read_midi(new, name=str(path)))

    monkeypatch.setattr(watch, "versions", one_save)
    model = ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32", "--steps", "2"]
    result = runner.invoke(app, ["play", str(midi), "--watch", *model])
    assert result.exit_code == 0, result.output
    assert streams_when_saved == [[["start"]]]  # the first version was playing, and kept playing
    first, second = fake_audio
    assert first.events == ["start", "abort", "close"] and second.events[0] == "start"
    assert second.events[-2:] == ["abort", "close"]  # the watch ended: the sound stops
    assert "segment 4 of 4 changed (track 2); re-rendered in" in result.stderr
    assert "re-rendered in" in result.stderr and "s (3 of 4 segments from the cache)\n" in result.stderr
