"""`spectrosynth dataset`: pairs -> Parquet shards, and reading them back (spectrosynth.data)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from midi_builder import Note, Song, Track
from training_helpers import melody, synthesize, write_pair
from typer.testing import CliRunner

from spectrosynth.cli import app
from spectrosynth.constants import FRAMES_PER_SEGMENT, MAX_LOG_MEL, MIN_LOG_MEL, SAMPLE_RATE
from spectrosynth.data import (
    DatasetError,
    DatasetReader,
    DatasetSettings,
    build_dataset,
    find_pairs,
    split_of,
)
from spectrosynth.data.build import whole_file_mel
from spectrosynth.data.store import shard_files
from spectrosynth.errors import SpectrosynthError
from spectrosynth.features import load_audio
from spectrosynth.midi import read_midi
from spectrosynth.remap import Remap, apply_remap
from spectrosynth.tokens import model_notes, prepare
from spectrosynth.training.examples import SongChunks

runner = CliRunner()


def test_pairs_are_found_by_name_with_a_preference_for_lossless(tmp_path):
    write_pair(tmp_path, "a", suffix=".wav")
    write_pair(tmp_path / "sub", "b", suffix=".flac")
    write_pair(tmp_path, "c", suffix=".ogg")
    (tmp_path / "c.wav").write_bytes((tmp_path / "a.wav").read_bytes())  # c has a .wav too: it wins
    (tmp_path / "lonely.mid").write_bytes(melody(2.0).to_bytes())
    (tmp_path / ".hidden.mid").write_bytes(melody(2.0).to_bytes())
    pairs, lonely = find_pairs(tmp_path)
    assert [(p.id, p.midi, p.audio) for p in pairs] == [
        ("a", "a.mid", "a.wav"),
        ("c", "c.mid", "c.wav"),
        ("sub/b", "sub/b.mid", "sub/b.flac"),
    ]
    assert [rel for rel, _ in lonely] == ["lonely.mid"]
    assert "no audio file lonely.wav" in lonely[0][1]
    rendered, none = find_pairs(tmp_path, rendered=True)
    assert {p.id for p in rendered} == {"a", "c", "sub/b", "lonely"} and not none


def test_a_song_round_trips_exactly(tmp_path):
    pairs, data = tmp_path / "pairs", tmp_path / "data"
    midi, wav = write_pair(pairs, "tune", seconds=7.0)
    report = build_dataset(pairs, data)
    assert report.added == ["tune"] and not report.rejected
    reader = DatasetReader(data)
    (ref,) = reader.songs
    song = reader.load(ref)
    audio = load_audio(wav)
    np.testing.assert_array_equal(song.mel, whole_file_mel(audio))
    assert song.mel.shape == (len(audio) // 320 + 1, 128) and ref.num_frames == song.mel.shape[0]
    notes, duration = model_notes(read_midi(midi))
    assert song.notes == [replace(n, track=0) for n in notes]
    assert song.duration == pytest.approx(duration) and song.split == "train"
    assert (song.midi, song.audio, song.gain_db) == ("tune.mid", "tune.wav", 0.0)


def test_grid_chunks_have_exactly_inference_tokens(tmp_path, complex_midi):
    # A real 18-track song with drums, and a song too dense for the model's 2048 positions: the dataset's
    # notes, cut on the 5.12 s grid, give the tokens `render` feeds the model, segment for segment.
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "complex.mid").write_bytes(complex_midi.read_bytes())
    dense = Song([Track([Note(40 + i % 48, i * 0.01, i * 0.01 + 0.05) for i in range(900)])])
    (pairs / "dense.mid").write_bytes(dense.to_bytes())
    songs = {name: prepare(read_midi(pairs / f"{name}.mid")) for name in ("complex", "dense")}
    for name, song in songs.items():
        sf.write(pairs / f"{name}.wav", synthesize(melody(1.0), song.duration + 0.5), SAMPLE_RATE)
    build_dataset(pairs, tmp_path / "data")
    reader = DatasetReader(tmp_path / "data")
    chunks = SongChunks(reader)
    eps = np.zeros((256, 128), np.float32)
    for ref in reader.songs:
        segments = songs[ref.id].segments
        got = [
            chunks.example(ref, j * FRAMES_PER_SEGMENT, 0.5, True, eps).tokens.tolist()
            for j in range(len(segments))
        ]
        assert got == [s.tokens for s in segments]
    assert len(songs["complex"].segments) == 58
    assert songs["dense"].segments[0].dropped_tokens  # the bound was exercised


def test_off_grid_chunk_starts_with_the_notes_sounding_there(tmp_path):
    # One note held 0-3 s, another at 2.5-2.6 s: a chunk from frame 100 (2.0 s) ties the first, and counts
    # its shifts from 2.0 s.
    song = Song([Track([Note(60, 0.0, 3.0), Note(64, 2.5, 2.6)])])
    write_pair(tmp_path / "pairs", "x", song=song)
    build_dataset(tmp_path / "pairs", tmp_path / "data")
    reader = DatasetReader(tmp_path / "data")
    tokens = SongChunks(reader).example(reader.songs[0], 100, 0.5, True, None).tokens.tolist()
    program, pitch, velocity, tie = 1135, 1004, 1132, 1134
    assert tokens[:3] == [program, pitch + 60, tie]
    assert tokens[3:6] == [3 + 50, velocity + 1, pitch + 64]  # 2.5 s is 50 steps after 2.0 s


def test_unusable_pairs_are_reported_and_the_rest_added(tmp_path):
    pairs = tmp_path / "pairs"
    write_pair(pairs, "good")
    write_pair(pairs, "silent", audio=np.zeros(SAMPLE_RATE * 7, np.float32))
    write_pair(pairs, "short", audio=synthesize(melody(6.0), 2.0))  # the audio stops 4 s early
    write_pair(pairs, "long", audio=synthesize(melody(6.0), 30.0))  # 24 s more than the notes
    write_pair(pairs, "broken_audio")
    (pairs / "broken_audio.wav").write_bytes(b"RIFF not really")
    write_pair(pairs, "broken_midi")
    (pairs / "broken_midi.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    write_pair(pairs, "empty", song=Song([Track([])]), audio=synthesize(melody(2.0), 3.0))
    seen = []
    report = build_dataset(pairs, tmp_path / "data", progress=lambda *a: seen.append(a))
    assert report.added == ["good"]
    reasons = dict(report.rejected)
    assert set(reasons) == {
        "silent.mid",
        "short.mid",
        "long.mid",
        "broken_audio.mid",
        "broken_midi.mid",
        "empty.mid",
    }
    assert "silent" in reasons["silent.mid"]
    assert "lasts 2.0 s but the MIDI's notes 6.0 s" in reasons["short.mid"]
    assert "--max-extra" in reasons["long.mid"]
    assert "broken_audio.wav" in reasons["broken_audio.mid"]
    assert "broken_midi.mid" in reasons["broken_midi.mid"]
    assert "no notes" in reasons["empty.mid"]
    assert all("\n" not in r for r in reasons.values())
    assert sorted(s for s, what, _ in seen if what == "rejected") == sorted(
        p.removesuffix(".mid") for p in reasons
    )
    # a longer tolerance takes the long one
    report = build_dataset(pairs, tmp_path / "data2", DatasetSettings(max_extra=30.0))
    assert "long" in report.added


def test_a_second_run_resumes_and_a_new_pair_is_appended(tmp_path):
    pairs, data = tmp_path / "pairs", tmp_path / "data"
    for name in ("a", "b"):
        write_pair(pairs, name)
    first = build_dataset(pairs, data, songs_per_shard=1)
    assert sorted(first.added) == ["a", "b"] and len(shard_files(data)) == 2
    again = build_dataset(pairs, data)
    assert again.added == [] and again.existing == 2
    write_pair(pairs, "c")
    third = build_dataset(pairs, data)
    assert third.added == ["c"] and third.existing == 2
    assert [s.id for s in DatasetReader(data).songs] == ["a", "b", "c"]
    assert len(shard_files(data)) == 3  # old shards untouched, one new


def test_other_settings_cannot_be_added_to_a_dataset(tmp_path):
    pairs, data = tmp_path / "pairs", tmp_path / "data"
    write_pair(pairs, "a")
    build_dataset(pairs, data, DatasetSettings(holdout=0.1))
    with pytest.raises(DatasetError, match=r"made with other settings \(holdout=0.1\)"):
        build_dataset(pairs, data, DatasetSettings(holdout=0.2))
    with pytest.raises(DatasetError, match="programs"):
        build_dataset(pairs, data, DatasetSettings(programs=("0=40",), holdout=0.1))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and holds no dataset"):
        build_dataset(pairs, other)


def test_an_interrupted_run_keeps_finished_shards_and_leaves_no_partial_one(tmp_path, monkeypatch):
    import spectrosynth.data.build as build

    pairs, data = tmp_path / "pairs", tmp_path / "data"
    for name in ("a", "b", "c", "d"):
        write_pair(pairs, name)
    real = build.process_pair
    calls = []

    def interrupt_on_third(*args):
        calls.append(args[0].id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(build, "process_pair", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(pairs, data, songs_per_shard=10)
    assert [s.id for s in DatasetReader(data).songs] == ["a", "b"]  # the open shard was finished
    assert not list((data / "shards").glob(".*"))
    monkeypatch.setattr(build, "process_pair", real)
    assert build_dataset(pairs, data).added == ["c", "d"]


def test_stale_temporaries_are_never_read_and_are_removed(tmp_path):
    pairs, data = tmp_path / "pairs", tmp_path / "data"
    write_pair(pairs, "a")
    build_dataset(pairs, data)
    stale = data / "shards" / ".part-deadbeef.parquet.tmp"
    stale.write_bytes(b"half a shard")
    assert [s.id for s in DatasetReader(data).songs] == ["a"]
    build_dataset(pairs, data)
    assert not stale.exists()


def test_a_damaged_shard_is_a_one_line_error_naming_it(tmp_path):
    pairs, data = tmp_path / "pairs", tmp_path / "data"
    write_pair(pairs, "a")
    build_dataset(pairs, data)
    (shard,) = shard_files(data)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DatasetError, match=rf"dataset shard {shard} is damaged .*delete it"):
        DatasetReader(data)
    with pytest.raises(DatasetError, match="damaged"):
        build_dataset(pairs, data)


def test_several_processes_and_shards_make_the_same_dataset(tmp_path):
    pairs = tmp_path / "pairs"
    for name in ("a", "b", "c", "d", "e"):
        write_pair(pairs, name, seconds=3.0)
    build_dataset(pairs, tmp_path / "one")
    build_dataset(pairs, tmp_path / "jobs", jobs=2)
    for i in (1, 2, 3):
        build_dataset(pairs, tmp_path / "sharded", shard=(i, 3))
    readers = [DatasetReader(tmp_path / name) for name in ("one", "jobs", "sharded")]
    assert [[s.id for s in r.songs] for r in readers] == [["a", "b", "c", "d", "e"]] * 3
    for ref in readers[0].songs:
        expected = readers[0].load(ref).mel
        for other in readers[1:]:
            np.testing.assert_array_equal(
                other.load(next(s for s in other.songs if s.id == ref.id)).mel, expected
            )


def test_holdout_sets_aside_about_that_share_of_whole_songs_stably():
    ids = [f"collection/song{i}" for i in range(20000)]
    held = [i for i in ids if split_of(i, 0.1) == "validation"]
    assert 0.1 - 0.006 < len(held) / len(ids) < 0.1 + 0.006  # 3 standard deviations
    assert held == [i for i in ids if split_of(i, 0.1) == "validation"]
    assert set(held) <= {i for i in ids if split_of(i, 0.2) == "validation"}  # a larger holdout extends it
    assert all(split_of(i, 0.0) == "train" for i in ids[:100])


def test_instrument_options_change_the_stored_notes(tmp_path):
    pairs = tmp_path / "pairs"
    write_pair(pairs, "a", song=melody(4.0, program=0))
    build_dataset(pairs, tmp_path / "data", DatasetSettings(programs=("0=40",)))
    song = DatasetReader(tmp_path / "data").load(DatasetReader(tmp_path / "data").songs[0])
    assert {n.program for n in song.notes} == {40}
    score, _ = apply_remap(read_midi(pairs / "a.mid"), Remap.from_options(["0=40"], [], [], False))
    assert len(song.notes) == len(model_notes(score)[0])


def test_loud_audio_is_attenuated_below_the_mel_ceiling(tmp_path):
    pairs = tmp_path / "pairs"
    loud = np.clip(synthesize(melody(5.0), 5.5) * 20.0, -1, 1)  # a clipped, very loud render
    write_pair(pairs, "loud", seconds=5.0, audio=loud)
    report = build_dataset(pairs, tmp_path / "data")
    assert report.attenuated and report.attenuated[0][1] < -1.0
    reader = DatasetReader(tmp_path / "data")
    song = reader.load(reader.songs[0])
    assert song.gain_db == pytest.approx(report.attenuated[0][1], abs=1e-4)
    assert np.mean(song.mel >= MAX_LOG_MEL) <= 0.001 + 1e-4
    assert np.mean(whole_file_mel(loud) >= MAX_LOG_MEL) > 0.001  # the original was over the ceiling
    assert song.mel.min() == pytest.approx(MIN_LOG_MEL)


def test_the_dataset_command(tmp_path):
    pairs, data = tmp_path / "pairs", tmp_path / "data"
    write_pair(pairs, "good")
    write_pair(pairs, "silent", audio=np.zeros(SAMPLE_RATE * 7, np.float32))
    result = runner.invoke(app, ["dataset", str(pairs), str(data), "--holdout", "0.5", "-q"])
    assert result.exit_code == 0, result.output
    assert "skipped silent: the audio is silent" in result.output
    assert len(DatasetReader(data).songs) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["dataset", str(empty), str(tmp_path / "d2")])
    assert result.exit_code == 1 and "no MIDI files in" in result.output
    only_bad = tmp_path / "bad"
    write_pair(only_bad, "silent", audio=np.zeros(SAMPLE_RATE * 7, np.float32))
    result = runner.invoke(app, ["dataset", str(only_bad), str(tmp_path / "d3")])
    assert result.exit_code == 1 and "no usable pairs" in result.output
    result = runner.invoke(app, ["dataset", str(pairs), str(tmp_path / "d4"), "--program", "nonsense"])
    assert result.exit_code == 1 and "nonsense" in result.output
    assert not (tmp_path / "d4").exists()  # a bad option fails before any work


def test_missing_pairs_folder():
    with pytest.raises(SpectrosynthError, match="no such folder"):
        build_dataset("/nonexistent/pairs", "/tmp/never")


def test_soundfont_pairs_from_midi_files_alone(tmp_path, waltz):
    from spectrosynth.soundfont import default_soundfont

    soundfont_module = pytest.importorskip("spectrosynth.soundfont")
    try:
        soundfont_module._fluidsynth()
    except SpectrosynthError as e:
        pytest.skip(f"no FluidSynth: {e}")
    pairs, data = tmp_path / "pairs", tmp_path / "data"
    pairs.mkdir()
    (pairs / "waltz.mid").write_bytes(waltz.read_bytes())
    (pairs / "waltz.wav").write_bytes(b"ignored: the soundfont renders the audio")
    result = runner.invoke(
        app, ["dataset", str(pairs), str(data), "--soundfont", "builtin", "--save-audio", "-q"]
    )
    assert result.exit_code == 0, result.output
    reader = DatasetReader(data)
    song = reader.load(reader.songs[0])
    assert song.audio == "soundfont:TimGM6mb.sf2"
    saved, rate = sf.read(data / "audio" / "waltz.flac", dtype="float32")
    assert rate == SAMPLE_RATE and len(saved) // 320 + 1 == song.num_frames
    assert len(saved) / SAMPLE_RATE == pytest.approx(song.duration + 1.0, abs=0.01)  # a 1 s release tail
    loud = song.mel > -4  # where the music is loud, the saved audio (24-bit PCM) has the stored mel
    np.testing.assert_allclose(whole_file_mel(saved)[loud], song.mel[loud], atol=1e-3)
    settings = DatasetReader(data).settings
    assert settings["soundfont"].startswith("TimGM6mb.sf2 sha256:")
    assert default_soundfont().name == "TimGM6mb.sf2"
    missing = runner.invoke(app, ["dataset", str(pairs), str(tmp_path / "d2"), "--soundfont", "/no/such.sf2"])
    assert missing.exit_code == 1 and "no soundfont file /no/such.sf2" in missing.output
