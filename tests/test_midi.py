import pretty_midi
import pytest

from spectrosynth.errors import MidiError
from spectrosynth.midi import Note, Pedal, apply_sustain, read_midi


def _midi_bytes(pm: pretty_midi.PrettyMIDI, tmp_path) -> bytes:
    path = tmp_path / "song.mid"
    pm.write(str(path))
    return path.read_bytes()


def test_reads_tracks_channels_and_notes(complex_midi):
    score = read_midi(complex_midi)
    assert len(score.tracks) == 18
    drums = [t for t in score.tracks if t.is_drum]
    assert len(drums) == 1 and drums[0].channel == 9  # MIDI channel 10
    assert all(t.channel is not None for t in score.tracks)
    assert sum(t.num_notes for t in score.tracks) == len(score.notes)
    assert score.end_time == max(n.end for n in score.notes)


def test_reads_bytes_with_a_name(waltz):
    score = read_midi(waltz.read_bytes(), name="<stdin>")
    assert score.source == "<stdin>" and len(score.notes) > 100


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"hello, not a song\n", "not a MIDI file"),
        ("truncated", "truncated"),
        ("garbage", "damaged"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, complex_midi, content, message):
    path = tmp_path / "bad.mid"
    real = complex_midi.read_bytes()
    if content == "truncated":
        content = real[: len(real) // 2]
    elif content == "garbage":
        content = real[:14] + bytes(range(256)) * 2
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MidiError, match=message) as info:
        read_midi(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_a_folder_is_not_a_midi_file(tmp_path):
    with pytest.raises(MidiError, match="folder"):
        read_midi(tmp_path)


def test_file_with_no_notes_reads_as_empty(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    score = read_midi(_midi_bytes(pm, tmp_path))
    assert score.notes == [] and score.tracks == [] and score.end_time == 0


def test_data_bytes_above_127_are_clipped_not_fatal(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes.append(pretty_midi.Note(100, 60, 0.0, 1.0))
    pm.instruments.append(inst)
    data = bytearray(_midi_bytes(pm, tmp_path))
    at = data.index(bytes([0x90, 60, 100]))
    data[at + 2] = 0xC8  # velocity 200: invalid, written by some broken sequencers
    score = read_midi(bytes(data))
    assert [n.velocity for n in score.notes] == [127]


def _note(pitch, start, end, track=0):
    return Note(pitch=pitch, velocity=80, start=start, end=end, program=0, track=track, is_drum=False)


def test_sustain_extends_released_notes_to_pedal_up():
    notes, end = apply_sustain([_note(60, 0.0, 1.0)], [Pedal(0.5, 127, 0), Pedal(3.0, 0, 0)], 1.0)
    assert notes[0].end == 3.0 and end == 3.0


def test_sustain_restrike_ends_previous_note_and_only_same_track():
    notes = [_note(60, 0.0, 0.5), _note(60, 1.0, 1.5), _note(62, 0.0, 0.5, track=1)]
    out, _ = apply_sustain(notes, [Pedal(0.0, 127, 0), Pedal(4.0, 0, 0)], 1.5)
    assert [(n.start, n.end) for n in out] == [(0.0, 1.0), (1.0, 4.0), (0.0, 0.5)]
    assert notes[0].end == 0.5  # the input is left alone


def test_sustain_never_released_lasts_to_the_last_event():
    out, end = apply_sustain([_note(60, 0.0, 1.0), _note(64, 2.0, 2.5)], [Pedal(0.5, 100, 0)], 2.5)
    assert [n.end for n in out] == [2.5, 2.5] and end == 2.5


def test_a_broken_fluidsynth_binding_does_not_break_reading_midi(tmp_path):
    # pyfluidsynth raises OSError when its C library cannot be loaded, and pretty_midi (which imports it)
    # copes only with ImportError: without spectrosynth's guard, no MIDI file could be read at all.
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "fluidsynth.py").write_text(
        "raise OSError('libfluidsynth.so.3: cannot open shared object file')\n"
    )
    song = Path(__file__).parent / "data" / "midi" / "nottingham" / "waltzes1.mid"
    code = f"from spectrosynth.midi import read_midi; print(len(read_midi({str(song)!r}).notes))"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "430"
    plain = subprocess.run(
        [sys.executable, "-c", "import pretty_midi"], capture_output=True, text=True, env=env
    )
    assert plain.returncode != 0 and "OSError" in plain.stderr  # what the guard prevents
