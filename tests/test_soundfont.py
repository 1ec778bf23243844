"""spectrosynth.soundfont: FluidSynth renders (pitch, length, velocity, drums, pedal, levels, errors).

The rendering tests need pyfluidsynth and the FluidSynth library and are skipped without them; the tests of
the missing-library message simulate its absence and always run.
"""

from __future__ import annotations

import builtins
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from midi_builder import Note, Song, Track, pedal
from skips import needs_fluidsynth

from spectrosynth import soundfont
from spectrosynth.errors import SpectrosynthError
from spectrosynth.midi import read_midi
from spectrosynth.soundfont import default_soundfont, render_score

SR = 16_000


def render(song: Song, rate: int = SR, tail: float = 1.0) -> np.ndarray:
    rendering = render_score(read_midi(song.to_bytes()), default_soundfont(), rate, tail=tail)
    assert rendering.audio.dtype == np.float32 and rendering.audio.ndim == 1
    assert rendering.sample_rate == rate
    return rendering.audio


def rms(x: np.ndarray, start: float = 0.0, stop: float | None = None, rate: int = SR) -> float:
    """RMS of x between `start` and `stop` seconds."""
    part = x[round(start * rate) : None if stop is None else round(stop * rate)].astype(np.float64)
    assert part.size
    return float(np.sqrt(np.mean(part**2)))


def peak_frequency(x: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_default_soundfont_is_pretty_midis():
    path = default_soundfont()
    assert path.name == "TimGM6mb.sf2" and path.parent.name == "pretty_midi"
    assert path.read_bytes()[8:12] == b"sfbk"  # a RIFF SoundFont


# -- what is rendered ------------------------------------------------------------------------------------


@needs_fluidsynth
@pytest.mark.parametrize(("pitch", "hz"), [(69, 440.0), (76, 659.26), (81, 880.0)])
def test_note_sounds_at_its_pitch_then_dies_away(pitch, hz):
    x = render(Song([Track([Note(pitch, 0.0, 1.0)])]))  # piano; its fundamental is the strongest partial
    assert peak_frequency(x[round(0.1 * SR) : round(0.9 * SR)]) == pytest.approx(hz, rel=0.005)
    during = rms(x, 0.1, 0.9)
    assert during > 1e-3
    assert rms(x, 1.8) < 1e-3 * during  # released at 1.0 s, silent before the 1 s tail ends


@needs_fluidsynth
@pytest.mark.parametrize("rate", [SR, 44_100])
@pytest.mark.parametrize("tail", [0.0, 0.5, 1.0])
def test_length_is_last_note_end_plus_tail(rate, tail):
    x = render(Song([Track([Note(60, 0.0, 0.5), Note(64, 0.2, 1.234)])]), rate, tail)
    assert len(x) == round((1.234 + tail) * rate)


@needs_fluidsynth
def test_empty_score_is_tail_of_silence():
    rendering = render_score(replace(read_midi(Song([Track([Note(60, 0, 1)])]).to_bytes()), notes=[]),
                             default_soundfont(), SR, tail=0.25)  # fmt: skip
    assert len(rendering.audio) == SR // 4 and not rendering.audio.any()


@needs_fluidsynth
def test_velocity_is_honoured():
    loud = rms(render(Song([Track([Note(60, 0.0, 1.0, velocity=127)])])))
    soft = rms(render(Song([Track([Note(60, 0.0, 1.0, velocity=30)])])))
    assert loud > 4 * soft > 0


@needs_fluidsynth
@pytest.mark.parametrize("kit", [0, 5])  # TimGM6mb has no kit 5: it falls back to kit 0
def test_drum_track_plays_the_drum_bank(kit):
    hits = [Note(36, 0.0, 0.2), Note(38, 0.25, 0.45), Note(42, 0.5, 0.6)]
    drums = render(Song([Track(hits, program=kit, channel=9)]))
    piano = render(Song([Track(hits, program=kit, channel=0)]))
    assert rms(drums, 0.0, 0.7) > 1e-3
    assert len(drums) == len(piano)
    assert abs(np.corrcoef(drums, piano)[0, 1]) < 0.5  # different instruments, not the same notes


@needs_fluidsynth
def test_sustain_pedal_holds_a_released_note():
    held = render(Song([Track([Note(60, 0.0, 0.3)], controls=pedal(0.1, 2.0))]), tail=0.5)
    dry = render(Song([Track([Note(60, 0.0, 0.3)])]), tail=2.2)
    assert len(held) == round(2.5 * SR)  # the note ends when the pedal is lifted
    assert rms(held, 0.8, 1.8) > 100 * rms(dry, 0.8, 1.8)
    assert rms(held, 2.4) < 0.05 * rms(held, 0.8, 1.8)  # and dies away after it


@needs_fluidsynth
def test_pedal_of_another_track_does_not_hold():
    note = Track([Note(60, 0.0, 0.3)])
    other = Track([Note(72, 2.0, 2.1)], channel=1, controls=pedal(0.1, 1.9))  # silent while its pedal is down
    alone = render(Song([note]), tail=2.0)
    mixed = render(Song([note, other]), tail=0.2)
    assert len(mixed) == len(alone) == round(2.3 * SR)
    assert rms(mixed, 0.8, 1.8) == pytest.approx(rms(alone, 0.8, 1.8), rel=1e-3)
    held = render(Song([Track([Note(60, 0.0, 0.3)], controls=pedal(0.1, 1.9))]), tail=2.0)
    assert rms(held, 0.8, 1.8) > 100 * rms(alone, 0.8, 1.8)  # the same pedal on the note's own track


@needs_fluidsynth
def test_tracks_play_on_their_own_channels():
    """Tracks do not share programs or pedals: the mix is the sum of the tracks rendered alone.

    Not to the last bit: FluidSynth reuses voices, and an attack's first samples depend a little on what a
    voice played before (here the snare after the kick starts softer for a few milliseconds)."""
    tracks = [
        Track([Note(60, 0.0, 0.4), Note(67, 0.5, 0.9)], program=0, controls=pedal(0.2, 1.2)),
        Track([Note(36, 0.0, 0.1), Note(38, 0.5, 0.6), Note(42, 1.1, 1.2)], channel=9),
        Track([Note(55, 0.25, 1.2)], program=40, channel=1),
        Track([Note(48, 0.0, 1.2)], program=73, channel=2),
        Track([Note(49, 0.3, 0.4), Note(51, 1.1, 1.2)], channel=9),  # a second drum track: channel 25
    ]
    mix = render(Song(tracks))
    alone = [render(Song([t])) for t in tracks]  # each ends at 1.2 s, as the mix does
    assert all(len(x) == len(mix) for x in alone)
    assert rms(mix - sum(alone)) < 0.05 * rms(mix)  # 0.02 here; 0.37 with a shared channel


@needs_fluidsynth
def test_note_off_comes_before_note_on_at_the_same_time():
    restruck = render(Song([Track([Note(60, 0.0, 0.5), Note(60, 0.5, 1.0)])]))
    single = render(Song([Track([Note(60, 0.0, 0.5)])]), tail=1.5)
    # the second note sounds to 1.0 s; the first note's note-off at 0.5 s must not cut it
    assert rms(restruck, 0.7, 0.95) > 10 * rms(single, 0.7, 0.95)


@needs_fluidsynth
def test_zero_length_note_does_not_hang():
    score = read_midi(Song([Track([Note(72, 0.0, 1.0)])]).to_bytes())
    score.notes.append(replace(score.notes[0], pitch=60, start=0.5, end=0.5))
    x = render_score(score, default_soundfont(), SR, tail=1.0).audio
    assert rms(x, 1.8) < 1e-6


@needs_fluidsynth
def test_rendering_is_deterministic(waltz):
    score = read_midi(waltz)
    score = replace(score, notes=[n for n in score.notes if n.start < 10])
    first = render_score(score, default_soundfont(), SR).audio
    second = render_score(score, default_soundfont(), SR).audio
    assert rms(first) > 1e-3
    np.testing.assert_array_equal(first, second)


@needs_fluidsynth
@pytest.mark.parametrize("rate", [SR, 44_100])
def test_real_multitrack_song_does_not_clip(complex_midi, rate):
    score = read_midi(complex_midi)
    rendering = render_score(score, default_soundfont(), rate)
    x = rendering.audio
    assert len(x) == round((score.end_time + 1.0) * rate)  # the file has no sustain pedal beyond its notes
    assert rendering.gain == 1.0  # the synth gain leaves this dense 18-track song unscaled
    assert 0.1 < np.abs(x).max() <= 1.0
    assert rms(x, rate=rate) > 0.01


@needs_fluidsynth
def test_loud_render_is_scaled_down(monkeypatch, waltz):
    score = read_midi(waltz)
    score = replace(score, notes=[n for n in score.notes if n.start < 4])
    normal = render_score(score, default_soundfont(), SR)
    monkeypatch.setattr(soundfont, "SYNTH_GAIN", soundfont.SYNTH_GAIN * 20)
    loud = render_score(score, default_soundfont(), SR)
    assert normal.gain == 1.0 and loud.gain < 0.5
    assert np.abs(loud.audio).max() == pytest.approx(1.0, abs=1e-6)
    expected = normal.audio * 20 * loud.gain
    assert np.max(np.abs(loud.audio - expected)) < 1e-3


# -- errors ----------------------------------------------------------------------------------------------


@pytest.fixture
def score():
    return read_midi(Song([Track([Note(60, 0.0, 0.5)])]).to_bytes())


@needs_fluidsynth
def test_missing_soundfont(tmp_path, score):
    with pytest.raises(SpectrosynthError, match="no such soundfont; check the path") as e:
        render_score(score, tmp_path / "nope.sf2")
    assert "nope.sf2" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SpectrosynthError, match="is a folder"):
        render_score(score, tmp_path)


@needs_fluidsynth
def test_invalid_soundfont(tmp_path, score, monkeypatch):
    import fluidsynth

    deleted = []
    original = fluidsynth.Synth.delete
    monkeypatch.setattr(fluidsynth.Synth, "delete", lambda self: (deleted.append(self), original(self)))
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00junk" + bytes(64))
    with pytest.raises(SpectrosynthError, match=r"bad\.sf2: not a SoundFont FluidSynth can load") as e:
        render_score(score, bad)
    assert "give a .sf2" in str(e.value) and "\n" not in str(e.value)
    assert len(deleted) == 1  # the synth is freed on errors too
    render_score(score, default_soundfont())
    assert len(deleted) == 2


@pytest.mark.parametrize(("rate", "tail"), [(4000, 1.0), (192_000, 1.0), (16000.5, 1.0), (SR, -1.0)])
def test_bad_arguments(score, rate, tail):
    with pytest.raises(ValueError, match="sample_rate|tail"):
        render_score(score, default_soundfont(), rate, tail)


def _install_hint(message: str) -> None:
    assert "pip install pyfluidsynth" in message
    assert "apt install libfluidsynth3" in message and "brew install fluid-synth" in message
    assert "\n" not in message


def test_missing_pyfluidsynth(monkeypatch, score):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # makes `import fluidsynth` fail
    with pytest.raises(SpectrosynthError, match="pyfluidsynth is not installed") as e:
        render_score(score, default_soundfont())
    _install_hint(str(e.value))


def test_missing_fluidsynth_library(monkeypatch, capsys, score):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "fluidsynth":
            print("pyfluidsynth chatter that must not reach the user")
            raise ImportError("Couldn't find the FluidSynth library.")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "fluidsynth", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SpectrosynthError, match="FluidSynth library could not be loaded") as e:
        render_score(score, default_soundfont())
    _install_hint(str(e.value))
    assert "chatter" not in capsys.readouterr().out


def test_import_does_not_need_fluidsynth():
    code = "import sys, spectrosynth.soundfont; assert 'fluidsynth' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
