"""Automation in the stereo mix and its stems: CC10, CC7 and CC11 changes over time as gain and pan envelopes
(spectrosynth.automation), on the envelope itself and on renders with the tiny model."""

import json
import math

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from midi_builder import Control, Note, Song, Track
from typer.testing import CliRunner

from spectrosynth.audio import db_to_gain
from spectrosynth.automation import RAMP_SECONDS, Automation, ramp_samples
from spectrosynth.cli import app
from spectrosynth.midi import read_midi
from spectrosynth.stems import Placement, automation, placement

runner = CliRunner()
PAN, VOLUME, EXPRESSION = 10, 7, 11
EXACT = ["--clip", "none", "--bit-depth", "32"]  # no level change, no quantisation: files compare sample-wise
RATE = 16000  # the model's rate: what the renders here are written at
RATES = (16000, 44100, 48000)


@pytest.fixture
def model_args(tiny_model):
    return ["--model", str(tiny_model), "--device", "cpu", "--dtype", "float32", "--steps", "2", "-q"]


def write(tmp_path, song: Song, name="song.mid"):
    path = tmp_path / name
    path.write_bytes(song.to_bytes())
    return path


def render_stereo(tmp_path, song: Song, model_args, *options) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`render --channels 2 --stems` of `song`: the mix and each stem by file name."""
    stems = tmp_path / "stems"
    args = [write(tmp_path, song), tmp_path / "mix.wav", "--channels", "2", "--stems", stems, *options]
    result = runner.invoke(app, ["render", *map(str, args), *model_args])
    assert result.exit_code == 0, result.output
    return sf.read(tmp_path / "mix.wav")[0], {p.name: sf.read(p)[0] for p in sorted(stems.iterdir())}


def twins(controls: list[Control], notes=None, **song) -> Song:
    """Two tracks playing the same notes with the same instrument, so that the model renders them alike:
    the first hard left with `controls` after it, the second hard right at full level. In the mix, left
    over right is then the first track's gain, sample by sample."""
    notes = notes or [Note(60, 0.0, 3.0), Note(67, 3.0, 6.0)]
    return Song([
        Track(notes, program=0, controls=[Control(0.0, PAN, 0), Control(0.0, VOLUME, 127), *controls]),
        Track(notes, program=0, channel=1, controls=[Control(0.0, PAN, 127), Control(0.0, VOLUME, 127)]),
    ], **song)  # fmt: skip


def energy_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-30)


def gain_curve(mix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left track's gain in a `twins` mix, where the right (its reference) is loud enough to divide by."""
    loud = np.abs(mix[:, 1]) > 0.05 * np.abs(mix[:, 1]).max()
    return np.flatnonzero(loud), mix[loud, 0] / mix[loud, 1]


# --------------------------------------------------------------------------------------------------------
# The envelope


def test_without_changes_it_is_the_placement_exactly():
    fixed = Placement(pan=30, volume=90, expression=110)
    moves = Automation(fixed)
    audio = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    np.testing.assert_array_equal(moves.place(audio, offset=123), fixed.place(audio))
    assert moves.levels_at(range(0, 10)).tolist() == [np.float32(fixed.level)] * 10
    assert moves.events == 0 and not moves.pan_automated and not moves.level_automated


def test_it_starts_from_the_placement_at_the_first_note(tmp_path, complex_midi):
    song = Song([
        # set-up before and with the first note (1 s) folds into the start; later changes are followed
        Track([Note(60, 1.0, 4.0)], controls=[Control(0.0, PAN, 20), Control(0.5, VOLUME, 90),
                                               Control(1.0, EXPRESSION, 100), Control(1.5, PAN, 120),
                                               Control(2.0, VOLUME, 90), Control(2.5, VOLUME, 50),
                                               Control(2.5, EXPRESSION, 127)]),  # fmt: skip
        # its channel's controllers from another MTrk
        Track([Note(64, 0.0, 3.0)], channel=2, mtrk=3),
        Track([], channel=2, controls=[Control(0.0, PAN, 127), Control(2.0, PAN, 0)], mtrk=4),
    ])  # fmt: skip
    score = read_midi(write(tmp_path, song))
    moves = automation(score, 0)
    assert moves.initial == placement(score, 0) == Placement(20, 90, 100)
    # CC7 90 again changes nothing; CC7 and CC11 at one instant are one change
    assert moves.changes == ((1.5, Placement(120, 90, 100)), (2.5, Placement(120, 50, 127)))
    assert moves.pan_automated and moves.level_automated and moves.events == 2
    other = automation(score, 1)
    assert other.initial == Placement(127, 100, 127) and other.changes == ((2.0, Placement(0, 100, 127)),)
    assert other.pan_automated and not other.level_automated
    # a real song's, at several starts: always where the fixed placement puts it
    complex_score = read_midi(complex_midi)
    for start in (0.0, 7.3, 30.0):
        for track in complex_score.tracks:
            found = automation(complex_score, track.index, start)
            assert found.initial == placement(complex_score, track.index, start)
            assert all(t >= 0 for t, _ in found.changes)


@pytest.mark.parametrize("rate", RATES)
def test_a_jump_ramps_linearly_from_the_events_sample(rate):
    at = 0.5003  # seconds: not on a 16 kHz sample
    event = math.floor(at * rate + 0.5)
    ramp = ramp_samples(rate)
    assert ramp == round(RAMP_SECONDS * rate)
    moves = Automation(Placement(pan=0, volume=127), [(at, Placement(pan=127, volume=0))])
    level = moves.levels_at(range(0, rate), rate)
    changed = np.flatnonzero(level != 1.0)
    assert abs(changed[0] - (event + 1)) <= 1  # the ramp starts at the event's sample
    assert np.all(level[: event + 1] == 1.0) and np.all(level[event + ramp :] == 0.0)
    steps = np.abs(np.diff(level.astype(np.float64)))
    assert steps.max() <= 1.0 / ramp + 1e-6  # a jump of 1 over `ramp` samples, never faster
    np.testing.assert_allclose(steps[event : event + ramp], 1.0 / ramp, atol=1e-6)  # linear
    gains = moves.gains_at(range(0, rate), rate)  # hard left at full level -> silence
    assert np.abs(np.diff(gains.astype(np.float64), axis=0)).max() <= 1.0 / ramp + 1e-6
    assert gains[event].tolist() == [1.0, 0.0] and np.all(gains[event + ramp :] == 0.0)


def test_a_change_during_a_ramp_goes_on_from_where_the_gain_is():
    ramp = ramp_samples(RATE)
    half = ramp // 2 / RATE
    moves = Automation(
        Placement(volume=127), [(0.1, Placement(volume=0)), (0.1 + half, Placement(volume=127))]
    )
    level = moves.levels_at(range(0, RATE // 2), RATE).astype(np.float64)
    event = round(0.1 * RATE)
    assert level[event + ramp // 2] == pytest.approx(0.5, abs=1e-6)  # turned back halfway down
    assert np.abs(np.diff(level)).max() <= 0.5 / (ramp // 2) + 1e-6  # continuous: half way back in a ramp
    assert np.all(level[event + ramp // 2 + ramp :] == 1.0)


def dense(seconds: float = 3.0, every: float = 0.001, seed: int = 0) -> Automation:
    """Random pan, volume and expression every `every` seconds: changes closer than a ramp."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 128, (int(seconds / every), 3))
    return Automation(Placement(), [(0.2 + i * every, Placement(*map(int, v))) for i, v in enumerate(values)])


@pytest.mark.parametrize("rate", RATES)
def test_chunks_of_any_size_give_the_same_envelope_exactly(rate, complex_midi):
    score = read_midi(complex_midi)
    tracks = [automation(score, 1), automation(score, 4, start=3.0), dense()]
    assert all(t.events > 50 for t in tracks)
    rng = np.random.default_rng(1)
    total = 4 * rate
    audio = rng.standard_normal(total).astype(np.float32)
    for moves in tracks:
        whole = moves.place(audio, 0, rate)
        levels = moves.levels_at(range(0, total), rate)
        for sizes in ([1, 7, 4096], [81920], [rate // 100 * 3 + 1], list(rng.integers(1, 30000, 40))):
            chunks, level_chunks, offset = [], [], 0
            while offset < total:
                n = min(int(sizes[len(chunks) % len(sizes)]), total - offset)
                chunks.append(moves.place(audio[offset : offset + n], offset, rate))
                level_chunks.append(moves.levels_at(range(offset, offset + n), rate))
                offset += n
            np.testing.assert_array_equal(np.concatenate(chunks), whole)
            np.testing.assert_array_equal(np.concatenate(level_chunks), levels)


def test_event_times_follow_the_tempo_map(tmp_path):
    # 120 bpm for 1 s, then 60 bpm: the change at 3 s is at tick 2000 (1000 + 500), 3 s in the file
    song = Song([Track([Note(60, 0.0, 4.0)], controls=[Control(3.0, PAN, 127)])],
                tempos=[(0.0, 120.0), (1.0, 60.0)])  # fmt: skip
    score = read_midi(write(tmp_path, song))
    assert score.tempo_changes == 2
    moves = automation(score, 0)
    assert [t for t, _ in moves.changes] == [pytest.approx(3.0)]
    right = moves.gains_at(range(0, 4 * 48000), 48000)[:, 1]
    assert np.flatnonzero(right != right[0])[0] == 3 * 48000 + 1
    # from --start 2: the same change 1 s into the render
    later = automation(score, 0, start=2.0)
    assert np.flatnonzero(np.diff(later.gains_at(range(0, 2 * RATE), RATE)[:, 1]))[0] == RATE


def test_start_takes_the_values_in_force_then(tmp_path):
    controls = [Control(0.0, PAN, 0), Control(1.0, VOLUME, 90), Control(2.0, VOLUME, 64),
                Control(2.5, EXPRESSION, 100), Control(4.0, VOLUME, 127)]  # fmt: skip
    song = Song([Track([Note(60, 0.0, 6.0)], controls=controls)])
    score = read_midi(write(tmp_path, song))
    moves = automation(score, 0, start=3.0)
    assert moves.initial == Placement(0, 64, 100)  # the last value of each before the start
    assert moves.changes == ((pytest.approx(1.0), Placement(0, 127, 100)),)
    level = moves.levels_at(range(0, 2 * RATE))
    assert level[0] == pytest.approx(Placement(0, 64, 100).level)


# --------------------------------------------------------------------------------------------------------
# Renders


def test_a_pan_sweep_moves_the_track_from_left_to_right(tmp_path, model_args):
    # CC10 from 0 to 127 over 4 s (0.5 s to 4.5 s), an event every 50 ms
    sweep = [Control(0.5 + 0.05 * i, PAN, round(127 * i / 80)) for i in range(81)]
    song = Song([Track([Note(60, 0.0, 5.0), Note(64, 2.0, 5.0)], program=40,
                       controls=[Control(0.0, PAN, 0), Control(0.0, VOLUME, 127), *sweep])])  # fmt: skip
    mix, stems = render_stereo(tmp_path, song, model_args, *EXACT)
    np.testing.assert_array_equal(stems["01-strings-violin.wav"], mix)  # one track: its stem is the mix
    window = RATE // 4
    sides = [(energy_db(mix[i : i + window, 0]), energy_db(mix[i : i + window, 1]))
             for i in range(0, 5 * RATE, window)]  # fmt: skip
    balance = [right - left for left, right in sides]
    assert balance[0] <= -40 and balance[1] <= -20  # left at the start
    assert balance[-1] >= 40 and balance[-2] >= 20  # right at the end
    moving = balance[2:18]  # 0.5 s to 4.5 s
    assert all(b > a for a, b in zip(moving, moving[1:], strict=False))  # steadily to the right
    # constant power: each side's share of the energy is the pan law's, sample by sample
    moves = automation(read_midi(tmp_path / "song.mid"), 0)
    gains = moves.gains_at(range(len(mix))).astype(np.float64)
    power = np.square(mix).sum(axis=1)
    for i in range(0, 5 * RATE, window):
        part = slice(i, i + window)
        share = np.square(mix[part, 1]).sum() / power[part].sum()
        assert share == pytest.approx((power[part] * gains[part, 1] ** 2).sum() / power[part].sum(), abs=1e-4)


def test_a_volume_fade_follows_gm2s_curve_and_ends_in_silence(tmp_path, model_args):
    # CC7 from 127 to 0 over the last 2 s of the notes (4 s to 6 s), an event every 50 ms
    values = [round(127 * (1 - i / 40)) for i in range(41)]
    fade = [Control(4.0 + 0.05 * i, VOLUME, v) for i, v in enumerate(values)]
    mix, stems = render_stereo(tmp_path, twins(fade), model_args, *EXACT)
    # before the fade both sides are equal; within it, left over right is the curve at each value
    assert energy_db(mix[: 4 * RATE, 0]) - energy_db(mix[: 4 * RATE, 1]) == pytest.approx(0.0, abs=0.01)
    ramp = ramp_samples(RATE)
    for i, v in enumerate(values[:-1]):
        if v < 10:
            break  # -50 dB and below: the two renders' rounding differences show
        begin = round((4.0 + 0.05 * i) * RATE) + ramp
        part = slice(begin, round((4.05 + 0.05 * i) * RATE))
        measured = energy_db(mix[part, 0]) - energy_db(mix[part, 1])
        assert measured == pytest.approx(40 * math.log10(v / 127), abs=0.05), (i, v)
    # silent after the last event: the track's stem exactly, the mix's left up to the pan law's cos(pi/2)
    after = round(6.0 * RATE) + ramp
    faded = stems["01-piano-acoustic-grand-piano.wav"]
    assert np.all(faded[after:] == 0.0) and np.abs(faded[: 4 * RATE]).max() > 0.05
    assert np.abs(mix[after:, 0]).max() < 1e-9 and np.abs(mix[after:, 1]).max() > 0.05
    np.testing.assert_allclose(faded + stems["02-piano-acoustic-grand-piano.wav"], mix, atol=1e-6)


def test_a_jump_in_the_render_is_a_ramp_from_the_events_sample(tmp_path, model_args):
    # a tempo change before it: the event's time is the file's seconds through the tempo map
    song = twins([Control(2.5, VOLUME, 0)], tempos=[(0.0, 120.0), (1.0, 90.0)])
    score = read_midi(write(tmp_path, song))
    at = automation(score, 0).changes[0][0]
    assert at == pytest.approx(2.5, abs=1e-5)  # 90 bpm is 666 667 us a beat in the file
    mix, _ = render_stereo(tmp_path, song, model_args, *EXACT)
    where, gain = gain_curve(mix)
    event, ramp = math.floor(at * RATE + 0.5), ramp_samples(RATE)
    before = where <= event
    np.testing.assert_allclose(gain[before], 1.0, atol=1e-3)
    during = (where > event) & (where < event + ramp)
    np.testing.assert_allclose(gain[during], 1.0 - (where[during] - event) / ramp, atol=1e-3)
    assert np.abs(mix[event + ramp :, 0]).max() < 1e-9  # silent, but for the pan law's cos(pi/2) of the right


def test_render_from_start_uses_the_values_in_force(tmp_path, model_args):
    controls = [Control(1.0, VOLUME, 90), Control(2.0, VOLUME, 64), Control(4.0, VOLUME, 127)]
    song = twins(controls, notes=[Note(60, 0.0, 6.0)])
    mix, _ = render_stereo(tmp_path, song, model_args, "--start", "3", "--duration", "2", *EXACT)
    first = slice(0, RATE)  # 3 s to 4 s in the file: CC7 64, set at 2 s
    assert energy_db(mix[first, 0]) - energy_db(mix[first, 1]) == pytest.approx(40 * math.log10(64 / 127),
                                                                               abs=0.05)  # fmt: skip
    where, gain = gain_curve(mix)
    up = where > RATE + ramp_samples(RATE)  # back to 127 at 4 s in the file, 1 s into the render
    np.testing.assert_allclose(gain[up], 1.0, atol=1e-3)
    assert np.all(gain[where <= RATE] < 0.26)  # (64 / 127)^2 = 0.254


def test_loudness_and_the_ceiling_act_on_the_automated_mix(tmp_path, model_args):
    fade = [Control(3.0 + 0.05 * i, VOLUME, round(127 * (1 - i / 40))) for i in range(41)]
    song = twins(fade)
    for target in ("-20", "-6"):  # -6: loud enough that the -1 dBFS ceiling holds it lower
        out = tmp_path / target
        out.mkdir()
        mix, stems = render_stereo(out, song, model_args, "--loudness", target)
        measured = pyloudnorm.Meter(RATE).integrated_loudness(mix)
        assert np.abs(mix).max() <= db_to_gain(-1.0) + 1e-4
        if target == "-20":
            assert measured == pytest.approx(-20.0, abs=0.5)
        np.testing.assert_allclose(sum(stems.values()), mix, atol=len(stems) / 32768)


def test_mono_stems_are_untouched_by_automation(tmp_path, model_args):
    fade = [Control(4.0 + 0.05 * i, VOLUME, round(127 * (1 - i / 40))) for i in range(41)]
    stems = tmp_path / "stems"
    args = [write(tmp_path, twins(fade)), tmp_path / "mix.wav", "--stems", stems, *EXACT]
    assert runner.invoke(app, ["render", *map(str, args), *model_args]).exit_code == 0
    faded, steady = (sf.read(p)[0] for p in sorted(stems.iterdir()))
    assert faded.ndim == 1 and np.abs(faded[5 * RATE : 6 * RATE]).max() > 0.05  # not faded
    np.testing.assert_allclose(faded, steady, atol=1e-4)  # as the model rendered it, like its twin


def test_inspect_says_which_tracks_are_automated(tmp_path):
    song = twins([Control(2.0, VOLUME, 64), Control(2.0, PAN, 64), Control(3.0, EXPRESSION, 90)])
    result = runner.invoke(app, ["inspect", str(write(tmp_path, song)), "--json"])
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.output)["tracks"]
    assert (first["pan"], first["volume"], first["expression"]) == (0, 127, 127)  # at the first note
    assert first["pan_automated"] and first["level_automated"] and first["automation_events"] == 2
    assert not second["pan_automated"] and not second["level_automated"] and second["automation_events"] == 0


def by_definition(moves: Automation, samples: int, rate: int) -> np.ndarray:
    """(left, right, level) of each sample, straight from the definition, one sample at a time: the value
    in force ramps linearly from where it is at a change's sample to the change's target."""
    ramp = ramp_samples(rate)
    at = [math.floor(t * rate + 0.5) for t, _ in moves.changes]
    goals = [(*p.gains(), p.level) for _, p in moves.changes]
    value = [(*moves.initial.gains(), moves.initial.level)]
    origins = []
    out, k = [], -1
    for n in range(samples):
        while k + 1 < len(at) and at[k + 1] <= n:
            k += 1
            origins.append(current(origins, goals, at, k - 1, at[k], ramp) if k else value[0])
        out.append(value[0] if k < 0 else current(origins, goals, at, k, n, ramp))
    return np.array(out, np.float32)


def current(origins, goals, at, k, n, ramp):
    step = min(1.0, (n - at[k]) / ramp)
    return tuple(o + (g - o) * step for o, g in zip(origins[k], goals[k], strict=True))


@pytest.mark.parametrize("rate", RATES)
def test_the_envelope_is_its_definition(rate):
    moves = dense(seconds=0.3, every=0.0017, seed=2)
    moves = Automation(
        moves.initial, [*moves.changes, (0.6, Placement(0, 0, 0)), (0.6, Placement(127, 90, 3))]
    )
    samples = int(0.7 * rate)
    expected = by_definition(moves, samples, rate)
    np.testing.assert_allclose(moves.gains_at(range(0, samples), rate), expected[:, :2], atol=2e-7)
    np.testing.assert_allclose(moves.levels_at(range(0, samples), rate), expected[:, 2], atol=2e-7)
