"""Stems, stereo mixes from the MIDI file's pan and levels (spectrosynth.stems), on render and batch."""

import math

import numpy as np
import pytest
import soundfile as sf
from midi_builder import Control, Note, Song, Track
from typer.testing import CliRunner

from spectrosynth.cli import app
from spectrosynth.midi import read_midi
from spectrosynth.outputs import OutputSettings
from spectrosynth.remap import Remap
from spectrosynth.stems import Placement, placement, plan_parts, stem_name

runner = CliRunner()
PAN, VOLUME, EXPRESSION = 10, 7, 11
EXACT = ["--clip", "none", "--bit-depth", "32"]  # no level change, no quantisation: files compare sample-wise


@pytest.fixture
def model_args(tiny_model):
    return ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32", "--steps", "2", "-q"]


def render(*args):
    return runner.invoke(app, ["render", *map(str, args)])


def write(tmp_path, song: Song, name="song.mid"):
    path = tmp_path / name
    path.write_bytes(song.to_bytes())
    return path


def three_tracks() -> Song:
    """Violin, bass and drums, all playing from the start to 6 s."""
    return Song([
        Track([Note(60, 0.0, 3.0), Note(64, 3.0, 6.0)], program=40, name="violin"),
        Track([Note(40, 0.0, 2.0), Note(43, 2.0, 6.0)], program=32, channel=1),
        Track([Note(36, 0.5, 0.6), Note(38, 5.5, 6.0)], channel=9),
    ])  # fmt: skip


def energy_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-30)


# --------------------------------------------------------------------------------------------------------
# Placement: RP-036's pan law, GM2's level curve, the values at the first note


def test_pan_law_is_constant_power():
    assert Placement(pan=0, volume=127).gains() == pytest.approx((1.0, 0.0))
    assert Placement(pan=1, volume=127).gains() == pytest.approx((1.0, 0.0))
    assert Placement(pan=127, volume=127).gains() == pytest.approx((0.0, 1.0))
    left, right = Placement(pan=64, volume=127).gains()
    assert left == pytest.approx(math.sqrt(0.5)) and right == pytest.approx(math.sqrt(0.5))
    for pan in range(128):
        left, right = Placement(pan=pan, volume=127).gains()
        assert left**2 + right**2 == pytest.approx(1.0)  # the power stays the same across the field


def test_level_follows_volume_and_expression():
    assert Placement(volume=127).level == 1.0
    assert 20 * math.log10(Placement(volume=64).level) == pytest.approx(40 * math.log10(64 / 127))
    assert Placement(volume=127, expression=64).level == pytest.approx(Placement(volume=64).level)
    assert Placement(volume=0).gains() == (0.0, 0.0)


def test_placement_takes_the_values_at_the_first_note(tmp_path):
    song = Song([
        # pan and volume before the first note (1 s); a later pan change is not followed
        Track([Note(60, 1.0, 2.0)], controls=[Control(0.0, PAN, 20), Control(0.5, VOLUME, 90),
                                               Control(1.5, PAN, 120)]),  # fmt: skip
        # no controllers: General MIDI's defaults
        Track([Note(62, 0.0, 1.0)], channel=1),
        # its channel's controllers sent from another MTrk (a set-up track with no notes)
        Track([Note(64, 0.0, 1.0)], channel=2, mtrk=3),
        Track([], channel=2, controls=[Control(0.0, PAN, 127), Control(0.0, EXPRESSION, 64)], mtrk=4),
    ])  # fmt: skip
    score = read_midi(write(tmp_path, song))
    assert placement(score, 0) == Placement(pan=20, volume=90, expression=127)
    assert placement(score, 1) == Placement(pan=64, volume=100, expression=127)
    assert placement(score, 2) == Placement(pan=127, volume=100, expression=64)
    # with --start 1.6 the first note sounding is still the one from 1 s: it sounds at 1.6 s, after the
    # pan change at 1.5 s
    assert placement(score, 0, start=1.6).pan == 120


def test_stem_names_sort_and_say_what_they_are(tmp_path):
    score = read_midi(write(tmp_path, three_tracks()))
    assert [stem_name(score, i) for i in range(3)] == ["01-strings-violin", "02-bass-acoustic-bass",
                                                       "03-drums"]  # fmt: skip


def test_parts_skip_muted_and_silent_tracks(tmp_path):
    song = three_tracks()
    song.tracks.append(Track([Note(70, 8.0, 9.0)], program=73, channel=3))  # only after a 6 s preview
    score = read_midi(write(tmp_path, song))
    remap = Remap.from_options((), (), ("2",), False)
    parts = plan_parts(score, remap, duration=6.0, output=OutputSettings(), label="s.mid", stems=True)
    assert [p.track for p in parts.parts] == [None, 1, 3]  # the whole song (the mono mix), then tracks
    assert "s.mid: track 2 is muted: no stem" in parts.notices
    assert "s.mid: track 4 has no notes in the rendered window: no stem" in parts.notices
    assert len({len(p.song.segments) for p in parts.parts}) == 1  # every part as long as the song


# --------------------------------------------------------------------------------------------------------
# render --stems


def test_stems_of_three_tracks_equal_each_track_rendered_alone(tmp_path, model_args):
    midi = write(tmp_path, three_tracks())
    stems = tmp_path / "stems"
    result = render(midi, tmp_path / "mix.wav", "--stems", stems, *EXACT, *model_args)
    assert result.exit_code == 0, result.output
    names = ["01-strings-violin.wav", "02-bass-acoustic-bass.wav", "03-drums.wav"]
    assert sorted(p.name for p in stems.iterdir()) == names
    joint = tmp_path / "joint.wav"
    assert render(midi, joint, *EXACT, *model_args).exit_code == 0
    mix, _ = sf.read(tmp_path / "mix.wav")
    np.testing.assert_array_equal(mix, sf.read(joint)[0])  # the mono mix is the plain render
    for number, name in enumerate(names, 1):
        others = ",".join(str(n) for n in (1, 2, 3) if n != number)
        alone = tmp_path / f"alone{number}.wav"
        assert render(midi, alone, "--mute", others, *EXACT, *model_args).exit_code == 0
        stem, rate = sf.read(stems / name)
        reference, _ = sf.read(alone)
        assert rate == 16000 and stem.ndim == 1 and stem.shape == reference.shape == mix.shape
        # each part is sampled alone, exactly as its --mute render (rows of a batch would round differently)
        np.testing.assert_array_equal(stem, reference)
        assert np.abs(reference).max() > 0.05  # not silence
    # tracks differ from each other and from the mix
    first, second = sf.read(stems / names[0])[0], sf.read(stems / names[1])[0]
    assert np.abs(first - second).max() > 0.05 and np.abs(first - mix).max() > 0.05


def test_stems_take_the_output_options_and_the_mix_level(tmp_path, model_args):
    midi = write(tmp_path, three_tracks())
    stems = tmp_path / "stems"
    result = render(midi, tmp_path / "mix.flac", "--stems", stems, "-r", "48000", "--bit-depth", "24",
                    "--duration", "3", "--gain", "-6", *model_args)  # fmt: skip
    assert result.exit_code == 0, result.output
    for path in sorted(stems.iterdir()):
        info = sf.info(path)
        assert path.suffix == ".flac" and info.samplerate == 48000 and info.subtype == "PCM_24"
        assert info.frames == sf.info(tmp_path / "mix.flac").frames == 4 * 48000  # 3 s and the tail
    # the level: the same --gain (and rescale, if the mix needed it) on every stem
    plain = tmp_path / "plain"
    assert render(midi, tmp_path / "plain.flac", "--stems", plain, "-r", "48000", "--bit-depth", "24",
                  "--duration", "3", "--clip", "none", *model_args).exit_code == 0  # fmt: skip
    for path in sorted(stems.iterdir()):
        quiet, loud = sf.read(path)[0], sf.read(plain / path.name)[0]
        assert energy_db(loud) - energy_db(quiet) >= 6.0 - 0.05


def test_existing_stems_fail_before_rendering_unless_forced(tmp_path, model_args):
    midi = write(tmp_path, three_tracks())
    stems = tmp_path / "stems"
    stems.mkdir()
    (stems / "02-bass-acoustic-bass.wav").write_bytes(b"mine")
    result = render(midi, tmp_path / "mix.wav", "--stems", stems, *model_args)
    assert result.exit_code == 1
    assert "02-bass-acoustic-bass.wav exists; use -f/--force" in result.output
    assert (
        not (tmp_path / "mix.wav").exists() and (stems / "02-bass-acoustic-bass.wav").read_bytes() == b"mine"
    )
    assert render(midi, tmp_path / "mix.wav", "--stems", stems, "--force", *model_args).exit_code == 0
    assert sf.info(stems / "02-bass-acoustic-bass.wav").frames > 0
    missing = tmp_path / "no" / "such" / "stems"
    result = render(midi, tmp_path / "mix2.wav", "--stems", missing, *model_args)
    assert result.exit_code == 1 and "does not exist" in result.output


def test_muted_track_gets_no_stem(tmp_path, model_args):
    midi = write(tmp_path, three_tracks())
    result = render(midi, tmp_path / "mix.wav", "--stems", tmp_path / "stems", "--mute", "3",
                    *model_args[:-1])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "track 3 is muted: no stem" in result.output
    names = sorted(p.name for p in (tmp_path / "stems").iterdir())
    assert names == ["01-strings-violin.wav", "02-bass-acoustic-bass.wav"]


# --------------------------------------------------------------------------------------------------------
# --channels 2


def stereo_with_stems(tmp_path, song: Song, model_args) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`render --channels 2 --stems` of `song`, sample-exact: the mix and each stem by file name."""
    stems = tmp_path / "stems"
    result = render(write(tmp_path, song), tmp_path / "mix.wav", "--channels", "2", "--stems", stems, *EXACT,
                    *model_args)  # fmt: skip
    assert result.exit_code == 0, result.output
    return sf.read(tmp_path / "mix.wav")[0], {p.name: sf.read(p)[0] for p in sorted(stems.iterdir())}


def test_hard_left_and_right_tracks_land_in_their_own_channels(tmp_path, model_args):
    song = Song([
        Track([Note(60, 0.0, 4.0)], program=40, controls=[Control(0.0, PAN, 0)]),
        Track([Note(43, 0.0, 4.0)], program=32, channel=1, controls=[Control(0.0, PAN, 127)]),
    ])  # fmt: skip
    mix, stems = stereo_with_stems(tmp_path, song, model_args)
    left_stem, right_stem = stems["01-strings-violin.wav"], stems["02-bass-acoustic-bass.wav"]
    assert mix.shape[1] == left_stem.shape[1] == right_stem.shape[1] == 2
    assert energy_db(left_stem[:, 0]) - energy_db(left_stem[:, 1]) >= 20
    assert energy_db(right_stem[:, 1]) - energy_db(right_stem[:, 0]) >= 20
    # each side of the mix is its track: the stems summed at unity are the mix
    np.testing.assert_allclose(left_stem + right_stem, mix, atol=1e-6)
    assert energy_db(mix[:, 0] - left_stem[:, 0]) <= energy_db(mix[:, 0]) - 20
    assert energy_db(mix[:, 1] - right_stem[:, 1]) <= energy_db(mix[:, 1]) - 20


def test_channel_volume_64_is_12_db_below_127(tmp_path, model_args):
    notes = [Note(60, 0.0, 2.0), Note(67, 2.0, 4.0)]
    song = Song([
        Track(notes, program=0, controls=[Control(0.0, VOLUME, 127)]),
        Track(notes, program=0, channel=1, controls=[Control(0.0, VOLUME, 64)]),
    ])  # fmt: skip
    _, stems = stereo_with_stems(tmp_path, song, model_args)
    loud, soft = stems["01-piano-acoustic-grand-piano.wav"], stems["02-piano-acoustic-grand-piano.wav"]
    expected = 40 * math.log10(64 / 127)  # -11.9 dB
    assert energy_db(soft) - energy_db(loud) == pytest.approx(expected, abs=0.05)


def test_stereo_without_stems_and_its_errors(tmp_path, model_args):
    midi = write(tmp_path, three_tracks())
    out = tmp_path / "mix.wav"
    result = render(midi, out, "--channels", "2", "--duration", "2", *model_args)
    assert result.exit_code == 0, result.output
    assert sf.info(out).channels == 2 and [p.name for p in tmp_path.iterdir() if p.suffix == ".wav"] == [
        "mix.wav"
    ]
    result = render(midi, tmp_path / "b.wav", "--channels", "2", "--mel-out", tmp_path / "m.npy", *model_args)
    assert result.exit_code == 2 and "--channels 1" in result.output
    result = render(midi, tmp_path / "b.wav", "--channels", "3", *model_args)
    assert result.exit_code == 2 and "--channels" in result.output
    assert not (tmp_path / "b.wav").exists()


# --------------------------------------------------------------------------------------------------------
# batch --stems / --channels 2


def test_batch_writes_a_stem_folder_per_song_and_resumes(tmp_path, tiny_model):
    collection = tmp_path / "midi"
    (collection / "sub").mkdir(parents=True)
    write(collection, three_tracks(), "a.mid")
    write(collection / "sub", Song([Track([Note(60, 0.0, 1.0)], program=40)]), "b.mid")
    out = tmp_path / "audio"
    args = ["batch", str(collection), str(out), "--model", str(tiny_model), "--device", "cpu", "--steps", "2",
            "--dtype", "float32", "--stems", "--channels", "2", "--batch-size", "2", "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "a.stems").iterdir()) == [
        "01-strings-violin.wav", "02-bass-acoustic-bass.wav", "03-drums.wav"]  # fmt: skip
    assert [p.name for p in (out / "sub" / "b.stems").iterdir()] == ["01-strings-violin.wav"]
    assert sf.info(out / "a.wav").channels == 2 and sf.info(out / "a.stems" / "03-drums.wav").channels == 2
    mix = sf.read(out / "a.wav")[0]
    total = sum(sf.read(p)[0] for p in sorted((out / "a.stems").iterdir()))
    np.testing.assert_allclose(total, mix, atol=3 / 32768)  # 16-bit files: rounding of each
    # the same song rendered alone with `render` gives the same mix
    single = tmp_path / "single.wav"
    assert render(collection / "a.mid", single, "--channels", "2", "--model", tiny_model, "--device", "cpu",
                  "--steps", "2", "--dtype", "float32", "-q").exit_code == 0  # fmt: skip
    np.testing.assert_allclose(sf.read(single)[0], mix, atol=2e-3)
    before = (out / "a.wav").stat().st_mtime_ns
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and (out / "a.wav").stat().st_mtime_ns == before  # resumed: skipped
    # other settings are a different batch
    result = runner.invoke(app, [a for a in args if a != "--stems"])
    assert result.exit_code == 1 and "(stems True -> False)" in result.output, result.output


def test_new_options_keep_old_batch_digests():
    from spectrosynth.batch import RenderSettings

    settings = RenderSettings("m", None, "auto", "unipc", 20, 2.0, 0)
    data = settings.to_dict()
    assert "stems" not in data and "channels" not in data["output"] and "loudness" not in data["output"]
    stereo = RenderSettings("m", None, "auto", "unipc", 20, 2.0, 0, output=OutputSettings(channels=2),
                            stems=True)  # fmt: skip
    assert stereo.digest != settings.digest
    assert RenderSettings.from_dict(stereo.to_dict()) == stereo
    assert RenderSettings.from_dict(settings.to_dict()) == settings


def test_an_output_that_cannot_be_opened_leaves_nothing_behind(tmp_path, tiny_synth):
    from spectrosynth.errors import OutputError
    from spectrosynth.stems import PartsOutput

    score = read_midi(write(tmp_path, three_tracks()))
    settings = OutputSettings(channels=2)
    parts = plan_parts(score, Remap(), output=settings, stems=True)
    stems = tmp_path / "stems"
    (stems / "03-drums.wav").mkdir(parents=True)  # the last stem cannot be written
    with pytest.raises(OutputError, match="is a folder"):
        PartsOutput(parts, tiny_synth.vocoder, str(tmp_path / "mix.wav"), settings, stems_dir=stems)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.mid", "stems"]  # no temporaries
    assert [p.name for p in stems.iterdir()] == ["03-drums.wav"]


def test_an_error_while_rendering_removes_every_temporary(tmp_path, tiny_synth):
    from spectrosynth.stems import PartsOutput, sample_parts

    score = read_midi(write(tmp_path, three_tracks()))
    settings = OutputSettings()
    parts = plan_parts(score, Remap(), output=settings, stems=True)
    stems = tmp_path / "stems"
    mix = str(tmp_path / "mix.wav")
    with pytest.raises(KeyboardInterrupt):
        with PartsOutput(parts, tiny_synth.vocoder, mix, settings, stems_dir=stems) as out:
            for mels in sample_parts(tiny_synth, parts, 1, 0):
                out.add(mels)
                raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.mid"]  # not even the stem folder it made
