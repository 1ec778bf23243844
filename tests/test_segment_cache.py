"""The cache of rendered segments (spectrosynth.segment_cache): after an edit a render samples again only from
the first segment that changed, and writes the same bytes as a render without the cache."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from midi_builder import Note, Song, Track
from typer.testing import CliRunner

from spectrosynth.cli import app
from spectrosynth.pipeline import Synthesizer
from spectrosynth.segment_cache import (
    HEADER,
    CacheUse,
    SegmentCache,
    cache_root,
    chain_keys,
    parse_size,
)

runner = CliRunner()
SEGMENTS = 4  # the song below: its last note ends at 19.5 s, in segment 4 (15.36-20.48 s)


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """A cache folder of the test's own (conftest's is shared by the session)."""
    home = tmp_path / "cache"
    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(home))
    return home


@pytest.fixture
def model_args(tiny_model):
    return ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32", "--steps", "2", "-q"]


@pytest.fixture
def sampled(monkeypatch):
    """The rows of every sample_segments call: [(segment rows)], one entry per call."""
    calls = []
    real = Synthesizer.sample_segments

    def counting(self, rows, **kwargs):
        calls.append(len(rows))
        return real(self, rows, **kwargs)

    monkeypatch.setattr(Synthesizer, "sample_segments", counting)
    return calls


def song(last: float = 17.0, first: float = 0.0) -> Song:
    """Violin, bass and drums over four segments; `last`: when track 2's last note starts (segment 4),
    `first`: when track 1's first note starts (segment 1)."""
    return Song([
        Track([Note(60, first, 3.0), Note(64, 6.0, 12.0), Note(67, 14.0, 19.5)], program=40),
        Track([Note(40, 0.0, 5.0), Note(43, 8.0, 11.0), Note(45, last, 19.0)], program=32, channel=1),
        Track([Note(36, 0.5, 0.6), Note(38, 10.0, 10.1), Note(36, 18.0, 18.1)], channel=9),
    ])  # fmt: skip


def write(path, version: Song):
    path.write_bytes(version.to_bytes())
    return path


def render(*args):
    return runner.invoke(app, ["render", *map(str, args)])


def entries(home):
    return sorted((home / "segments").rglob("*.seg"))


def snapshot(home):
    """Every entry's name, size and modification time."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in entries(home)}


# --------------------------------------------------------------------------------------------------------
# Re-rendering after an edit


@pytest.mark.parametrize(
    "options,parts,changed",
    [
        ([], 1, 1),  # the song
        (["--channels", "2"], 3, 1),  # its three tracks; track 2 changed
        (["--stems", "STEMS"], 4, 2),  # the song and its three tracks; the song and track 2 changed
    ],
)
def test_an_edit_in_the_last_segment_samples_it_alone_and_renders_the_same_bytes(
    tmp_path, cache_home, model_args, sampled, options, parts, changed
):
    midi = write(tmp_path / "song.mid", song())
    stems = [str(tmp_path / "stems") if o == "STEMS" else o for o in options]
    first = render(midi, tmp_path / "first.wav", *stems, *model_args)
    assert first.exit_code == 0, first.output
    assert sampled == [1] * SEGMENTS * parts  # each part alone, segment by segment
    assert len(entries(cache_home)) == SEGMENTS * parts

    write(midi, song(last=17.5))  # track 2's last note, in the last segment
    sampled.clear()
    again = runner.invoke(app, ["render", str(midi), str(tmp_path / "again.wav"), *stems, "--force",
                                *model_args[:-1]])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert sampled == [1] * changed  # one call per changed part, for the last segment only
    total = SEGMENTS * parts
    parts_text = f" ({parts} parts)" if parts > 1 else ""
    assert f"{total - changed} of {total} segments{parts_text} from the cache in" in again.stderr

    stems_fresh = [str(tmp_path / "stems-fresh") if o == "STEMS" else o for o in options]
    fresh = render(midi, tmp_path / "fresh.wav", *stems_fresh, "--no-cache", *model_args)
    assert fresh.exit_code == 0, fresh.output
    assert (tmp_path / "again.wav").read_bytes() == (tmp_path / "fresh.wav").read_bytes()
    assert (tmp_path / "again.wav").read_bytes() != (tmp_path / "first.wav").read_bytes()
    if "STEMS" in options:
        for stem in sorted((tmp_path / "stems-fresh").iterdir()):
            assert (tmp_path / "stems" / stem.name).read_bytes() == stem.read_bytes()


def test_the_same_spectrogram_and_float_samples_as_without_the_cache(tmp_path, cache_home, model_args):
    """Exactly, not within 16-bit rounding: the spectrogram (.npy) and 32-bit float stems sample for sample
    (a float WAV's PEAK chunk holds a time stamp, so those files are compared by their samples)."""
    midi = write(tmp_path / "song.mid", song())
    exact = ["--bit-depth", "32", "--clip", "none"]
    assert render(midi, tmp_path / "a.wav", "--mel-out", tmp_path / "a.npy", *model_args).exit_code == 0
    assert render(midi, tmp_path / "m.wav", "--stems", tmp_path / "s", *exact, *model_args).exit_code == 0
    write(midi, song(last=16.0))
    assert render(midi, tmp_path / "b.wav", "--mel-out", tmp_path / "b.npy", *model_args).exit_code == 0
    assert render(midi, tmp_path / "c.wav", "--mel-out", tmp_path / "c.npy", "--no-cache",
                  *model_args).exit_code == 0  # fmt: skip
    assert np.load(tmp_path / "b.npy").tobytes() == np.load(tmp_path / "c.npy").tobytes()
    assert render(midi, tmp_path / "m2.wav", "--stems", tmp_path / "s2", *exact, *model_args).exit_code == 0
    assert render(midi, tmp_path / "m3.wav", "--stems", tmp_path / "s3", *exact, "--no-cache",
                  *model_args).exit_code == 0  # fmt: skip
    for name in ["m2.wav", *(f"s2/{p.name}" for p in (tmp_path / "s2").iterdir())]:
        other = name.replace("s2/", "s3/").replace("m2", "m3")
        np.testing.assert_array_equal(sf.read(tmp_path / name)[0], sf.read(tmp_path / other)[0])


def test_an_edit_in_the_first_segment_reuses_nothing(tmp_path, cache_home, model_args, sampled):
    midi = write(tmp_path / "song.mid", song())
    assert render(midi, tmp_path / "a.wav", *model_args).exit_code == 0
    write(midi, song(first=0.5))
    sampled.clear()
    result = runner.invoke(app, ["render", str(midi), str(tmp_path / "b.wav"), *model_args[:-1]])
    assert result.exit_code == 0 and "from the cache" not in result.stderr
    assert sampled == [1] * SEGMENTS


def test_a_stochastic_sampler_resumes_with_the_generator_state(tmp_path, cache_home, model_args, sampled):
    """dpmpp-2m-sde draws noise at every step: the segments sampled again must draw what a full render
    draws there, from the generator state kept with the segment before them."""
    midi = write(tmp_path / "song.mid", song())
    sde = ["--sampler", "dpmpp-2m-sde", "--seed", "5", "--mel-out"]
    assert render(midi, tmp_path / "a.wav", *sde, tmp_path / "a.npy", *model_args).exit_code == 0
    write(midi, song(last=17.5))
    sampled.clear()
    assert render(midi, tmp_path / "b.wav", *sde, tmp_path / "b.npy", *model_args).exit_code == 0
    assert sampled == [1]
    fresh = render(midi, tmp_path / "c.wav", *sde, tmp_path / "c.npy", "--no-cache", *model_args)
    assert fresh.exit_code == 0
    assert np.array_equal(np.load(tmp_path / "b.npy"), np.load(tmp_path / "c.npy"))
    assert (tmp_path / "b.wav").read_bytes() == (tmp_path / "c.wav").read_bytes()
    # another seed is another chain: nothing reused
    sampled.clear()
    assert render(midi, tmp_path / "d.wav", *sde[:3], "6", *model_args).exit_code == 0
    assert sampled == [1] * SEGMENTS


def test_a_damaged_entry_is_ignored_and_made_again(tmp_path, cache_home, model_args, sampled):
    midi = write(tmp_path / "song.mid", song())
    assert render(midi, tmp_path / "a.wav", *model_args).exit_code == 0
    damaged = entries(cache_home)
    for i, path in enumerate(damaged):  # one flipped byte in a spectrogram, one cut short, one overwritten
        data = bytearray(path.read_bytes())
        if i % 3 == 0:
            data[HEADER.size + 100] ^= 0x40
        elif i % 3 == 1:
            data = data[: len(data) // 2]
        else:
            data = bytearray(b"\0" * len(data))
        path.write_bytes(bytes(data))
    sampled.clear()
    assert render(midi, tmp_path / "b.wav", *model_args).exit_code == 0
    assert sampled == [1] * SEGMENTS  # nothing damaged was used
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    sampled.clear()
    assert render(midi, tmp_path / "c.wav", *model_args).exit_code == 0
    assert sampled == []  # made again, and whole
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "c.wav").read_bytes()


def test_no_cache_neither_reads_nor_writes(tmp_path, cache_home, model_args, sampled):
    midi = write(tmp_path / "song.mid", song())
    assert render(midi, tmp_path / "a.wav", "--no-cache", *model_args).exit_code == 0
    assert not cache_home.exists() or not entries(cache_home)
    assert render(midi, tmp_path / "b.wav", *model_args).exit_code == 0
    before = snapshot(cache_home)
    time.sleep(0.01)  # a read would touch an entry's modification time
    sampled.clear()
    result = render(midi, tmp_path / "c.wav", "--no-cache", *model_args)
    assert result.exit_code == 0 and sampled == [1] * SEGMENTS and snapshot(cache_home) == before
    sampled.clear()
    assert render(midi, tmp_path / "d.wav", "--cache-size", "0", *model_args).exit_code == 0
    assert sampled == [1] * SEGMENTS and snapshot(cache_home) == before
    assert len({(tmp_path / n).read_bytes() for n in ("a.wav", "b.wav", "c.wav", "d.wav")}) == 1


def test_an_unwritable_cache_costs_only_time(tmp_path, monkeypatch, model_args):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(blocker))
    midi = write(tmp_path / "song.mid", song())
    result = runner.invoke(app, ["render", str(midi), str(tmp_path / "a.wav"), *model_args[:-1]])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "segment cache" in line]
    assert len(lines) == 1 and "cannot be written" in lines[0] and "without keeping segments" in lines[0]
    assert render(midi, tmp_path / "b.wav", "--no-cache", *model_args).exit_code == 0
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_cache_size_values(tmp_path, cache_home, model_args):
    assert parse_size("2G") == 2 * 1024**3 and parse_size("500M") == 500 * 1024**2
    assert parse_size("1.5g") == 3 * 1024**3 // 2 and parse_size("64KiB") == 65536 and parse_size("0") == 0
    assert parse_size("123") == 123
    for bad in ("lots", "-1G", "2X", ""):
        with pytest.raises(ValueError):
            parse_size(bad)
    midi = write(tmp_path / "song.mid", song())
    result = render(midi, tmp_path / "a.wav", "--cache-size", "lots", *model_args)
    assert result.exit_code == 2 and "--cache-size" in result.output
    assert not (tmp_path / "a.wav").exists()


# --------------------------------------------------------------------------------------------------------
# The cache itself


def test_entries_round_trip_and_keys_chain(tmp_path):
    cache = SegmentCache(tmp_path, "1M")
    keys = chain_keys(b"identity", b"state", [[1, 2, 3], [4, 5], [6]])
    assert len(set(keys)) == 3
    assert chain_keys(b"identity", b"state", [[1, 2, 3], [4, 5], [7]])[:2] == keys[:2]  # an edit: a new tail
    assert chain_keys(b"identity", b"state", [[1, 2, 4], [4, 5], [6]])[1:] != keys[1:]  # context implied
    assert chain_keys(b"other", b"state", [[1, 2, 3]])[0] != keys[0]
    assert chain_keys(b"identity", b"other", [[1, 2, 3]])[0] != keys[0]
    mel = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
    state = torch.Generator().manual_seed(3).get_state()
    assert cache.get(keys[0]) is None and cache.put(keys[0], mel, state)
    got, kept = cache.get(keys[0])
    assert got.dtype == np.float32 and np.array_equal(got, mel) and kept == state.numpy().tobytes()
    assert cache.get(keys[1]) is None
    cache.path(keys[1]).parent.mkdir(parents=True, exist_ok=True)
    cache.path(keys[0]).rename(cache.path(keys[1]))  # an entry under another key's name
    assert cache.get(keys[1]) is None


def test_least_recently_used_entries_go_first(tmp_path):
    mel = np.zeros((256, 128), np.float32)
    size = len(HEADER.pack(b"", b"", b"", 0, 0, 0)) + mel.nbytes + 16
    cache = SegmentCache(tmp_path, 5 * size)  # room for five entries
    keys = chain_keys(b"id", b"", [[i] for i in range(8)])
    for i, key in enumerate(keys[:5]):
        assert cache.put(key, mel + i, b"s" * 16)
        os.utime(cache.path(key), (1000 + i, 1000 + i))  # put in order, one second apart
    assert cache.get(keys[0]) is not None  # used again: now the most recent
    assert cache.usage() == (5, 5 * size)
    cache.put(keys[5], mel, b"s" * 16)  # over the bound: down to 90 % of it, oldest first
    present = [cache.get(k) is not None for k in keys[:6]]
    assert present == [True, False, False, True, True, True]
    entries, used = cache.usage()
    assert used <= 5 * size and entries == 4


def test_eviction_tolerates_files_removed_meanwhile(tmp_path, monkeypatch):
    mel = np.zeros((256, 128), np.float32)
    cache = SegmentCache(tmp_path, "10M")
    keys = chain_keys(b"id", b"", [[i] for i in range(4)])
    for key in keys:
        cache.put(key, mel, b"")
    found = cache._scan()
    for _, _, path in found[:2]:
        path.unlink()  # another process evicted them after this one listed them
    monkeypatch.setattr(cache, "_scan", lambda: found)
    assert cache.trim(0) > 0
    assert not list(tmp_path.rglob("*.seg"))


def test_two_processes_filling_the_cache_at_once(tmp_path, tiny_model):
    """Two renders of the same song and two of another seed at once, into one small cache: all succeed,
    every entry left is whole, and a render from it equals one without it."""
    home = tmp_path / "cache"
    midi = write(tmp_path / "song.mid", song())
    env = {**os.environ, "SPECTROSYNTH_CACHE": str(home), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "spectrosynth", "render", str(midi), "--model", str(tiny_model), "--device",
            "cpu", "--dtype", "float32", "--steps", "2", "-q", "--cache-size", "1M"]  # fmt: skip
    runs = [subprocess.Popen([*base[:5], str(tmp_path / f"{i}.wav"), *base[5:], "--seed", str(i % 2)],
                             env=env, stderr=subprocess.PIPE, text=True) for i in range(4)]  # fmt: skip
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    assert (tmp_path / "0.wav").read_bytes() == (tmp_path / "2.wav").read_bytes()
    assert (tmp_path / "1.wav").read_bytes() == (tmp_path / "3.wav").read_bytes()
    cache = SegmentCache(home / "segments")
    count, used = cache.usage()
    assert 0 < count and used <= 1024**2  # 1M holds 7 of the 8 segments made: the bound held
    for path in entries(home):
        assert cache.get(bytes.fromhex(path.stem)) is not None  # whole
    assert not list((home / "segments").rglob("*.tmp"))
    check = subprocess.run([*base[:5], str(tmp_path / "again.wav"), *base[5:], "--seed", "0"], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert (tmp_path / "again.wav").read_bytes() == (tmp_path / "0.wav").read_bytes()


# --------------------------------------------------------------------------------------------------------
# The Python API, doctor, playback's schedule


def test_python_api_takes_a_cache(tmp_path, tiny_synth, waltz):
    cache = SegmentCache(tmp_path / "segments")
    plain = tiny_synth.render(waltz, steps=2, seed=1, length=12.0)
    cached = tiny_synth.render(waltz, steps=2, seed=1, length=12.0, cache=cache)
    again = tiny_synth.render(waltz, steps=2, seed=1, length=12.0, cache=cache)
    assert np.array_equal(plain.audio, cached.audio) and np.array_equal(plain.audio, again.audio)
    use = CacheUse()
    segments = [s.tokens for s in plain.segments]
    mels = list(tiny_synth.iter_parts([segments, segments], 2, seed=1, cache=cache, use=use))
    assert use.reused[0] == [True] * len(segments) and use.summary() == f"{2 * len(segments)} of " \
        f"{2 * len(segments)} segments (2 parts) from the cache"  # fmt: skip
    assert np.array_equal(np.concatenate([m[1] for m in mels]), plain.mel)


def test_a_synthesizer_without_model_files_keeps_nothing(tmp_path, tiny_synth, waltz):
    bare = Synthesizer(tiny_synth.notes_encoder, tiny_synth.context_encoder, tiny_synth.decoder,
                       tiny_synth.schedule, tiny_synth.vocoder)  # fmt: skip
    cache = SegmentCache(tmp_path / "segments")
    bare.render(waltz, steps=2, length=6.0, cache=cache)
    assert cache.usage() == (0, 0)


def test_doctor_reports_the_segment_cache(tmp_path, monkeypatch):
    from spectrosynth import doctor

    monkeypatch.setenv("SPECTROSYNTH_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache" / "segments"
    cache = SegmentCache(cache_root())
    for key in chain_keys(b"id", b"", [[1], [2]]):
        cache.put(key, np.zeros((256, 128), np.float32), b"")
    report = doctor.collect()["segment_cache"]
    assert report["folder"] == str(tmp_path / "cache" / "segments") and report["entries"] == 2
    assert report["size_mb"] == 0.3 and report["default_bound"] == "2G"
    assert "rendered-segments cache" in doctor.format_report(doctor.collect())
    monkeypatch.setenv("SPECTROSYNTH_CACHE", "off")
    assert doctor.collect()["segment_cache"] == {"enabled": False, "folder": None}


def test_playback_measures_the_speed_after_the_cached_start():
    """Segments taken from the cache before the first one sampled come at once; the speed that decides when
    playback starts is the sampling's, measured after them."""
    from spectrosynth.playback import Schedule

    now = [0.0]
    schedule = Schedule(40 * 5.12, 40 * 5.12, clock=lambda: now[0])
    schedule.begin()
    for k in range(3):  # the first 3 segments from the cache, in 0.3 s (the vocoder's time)
        now[0] += 0.1
        schedule.rendered((k + 1) * 5.12, cached=True)
        schedule.delivered(k * 5.12)
    assert schedule.speed() == 0.0 and not schedule.ready()  # nothing sampled yet: not known
    now[0] += 10.24
    schedule.rendered(4 * 5.12)  # then one segment sampled, at 0.5x real time
    schedule.delivered(3 * 5.12)
    # counted from the start it would be 1.9x real time, and playback would start, then run dry
    assert schedule.speed() == pytest.approx(0.5)
    assert not schedule.ready()
    schedule.finished()
    assert schedule.ready()
