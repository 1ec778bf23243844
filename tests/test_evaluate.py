"""spectrosynth.evaluation and `spectrosynth evaluate`: the measure itself, then the command line.

The measure is checked on renders whose quality is known: a FluidSynth render of a real MIDI file plays
exactly its notes (high note F1, no seams), while the same audio 100 ms late, the MIDI a semitone off,
white noise and the random tiny model's render do not. The renders need pyfluidsynth and the FluidSynth
library; those tests are skipped without them, as in test_soundfont.py. The figures behind the thresholds
are in docs/quality.md (bench/evaluate_validation.py remakes them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from midi_builder import Note, Song, Track
from skips import needs_fluidsynth
from typer.testing import CliRunner

from spectrosynth import soundfont
from spectrosynth.cli import app
from spectrosynth.constants import MIN_LOG_MEL, SAMPLE_RATE
from spectrosynth.errors import SpectrosynthError
from spectrosynth.evaluation import (
    INSTALL,
    evaluate_audio,
    evaluate_file,
    mel_l1,
    note_scores,
    reference_notes,
    seam_score,
    transcribe,
    transcription,
)
from spectrosynth.midi import read_midi
from spectrosynth.remap import Remap

pytest.importorskip("mir_eval")
# Found, not imported: importing basic_pitch here would let it find TensorFlow (see transcription.py).
if importlib.util.find_spec("basic_pitch") is None:
    pytest.skip(f"basic-pitch is not installed ({INSTALL})", allow_module_level=True)

runner = CliRunner()
SR = SAMPLE_RATE
CLIP = 20 * SR  # 20 s: three segment boundaries, about 90 notes of the waltz


def _render(score, samples: int | None = CLIP) -> np.ndarray:
    audio = soundfont.render_score(score, soundfont.default_soundfont(), SR).audio
    return audio[:samples]


@pytest.fixture(scope="module")
def waltz_score(request):
    return read_midi(request.config.rootpath / "tests" / "data" / "midi" / "nottingham" / "waltzes1.mid")


@pytest.fixture(scope="module")
def truth(waltz_score) -> np.ndarray:
    """The first 20 s of the waltz rendered with the General MIDI soundfont: it plays exactly the notes."""
    return _render(waltz_score)


@pytest.fixture(scope="module")
def truth_scores(waltz_score, truth) -> dict:
    return evaluate_audio(waltz_score, truth, SR, truth)


# --------------------------------------------------------------------------------------------------------
# The measure on known renders


@needs_fluidsynth
def test_ground_truth_scores_high_and_has_no_seam(truth_scores):
    # Measured: note F1 0.819 (precision 0.729, recall 0.935), seam 1.13 (bench/evaluate_validation.py).
    assert truth_scores["note_f1"] > 0.75
    assert truth_scores["recall"] > 0.85 and truth_scores["precision"] > 0.65
    assert 0.7 <= truth_scores["seam"] <= 1.4
    assert truth_scores["mel_l1"] == 0.0


@needs_fluidsynth
def test_white_noise_scores_zero(waltz_score, truth, truth_scores):
    rms = float(np.sqrt(np.mean(truth.astype(np.float64) ** 2)))
    noise = (np.random.default_rng(0).standard_normal(len(truth)) * rms).astype(np.float32)
    scores = evaluate_audio(waltz_score, noise, SR, truth)
    assert scores["note_f1"] < 0.05
    assert scores["mel_l1"] > 2.0  # 3.5 to 4.3 natural-log units on whole songs
    assert 0.8 <= scores["seam"] <= 1.25  # stationary noise has no seams either


@needs_fluidsynth
def test_audio_100ms_late_scores_far_lower(waltz_score, truth, truth_scores):
    late = np.concatenate([np.zeros(SR // 10, np.float32), truth])
    scores = evaluate_audio(waltz_score, late, SR, truth)
    assert scores["note_f1"] < 0.2 < truth_scores["note_f1"] - 0.5  # every onset 50 ms past the tolerance
    assert scores["mel_l1"] > 0.3


@needs_fluidsynth
def test_midi_a_semitone_off_scores_far_lower(waltz_score, truth, truth_scores):
    up = replace(waltz_score, notes=[replace(n, pitch=n.pitch + 1) for n in waltz_score.notes])
    scores = evaluate_audio(up, truth, SR)
    assert scores["note_f1"] < 0.1 < truth_scores["note_f1"] - 0.6
    assert "mel_l1" not in scores


@pytest.fixture(scope="module")
def tiny_render(tiny_model, waltz_score, tmp_path_factory):
    """The random tiny checkpoint's render of the waltz's first 10 s, through `spectrosynth render`."""
    out = tmp_path_factory.mktemp("tiny-render") / "waltz.wav"
    args = ["render", waltz_score.source, str(out), "--model", str(tiny_model), "--device", "cpu",
            "--steps", "4", "--duration", "10", "--no-trim", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_random_tiny_model_scores_zero(waltz_score, tiny_render):
    scores = evaluate_file(waltz_score.source, tiny_render)
    assert scores["input"] == waltz_score.source and scores["audio"] == str(tiny_render)
    assert scores["note_f1"] is not None and scores["note_f1"] < 0.05
    assert scores["seam"] is not None  # 10.24 s: one boundary


# --------------------------------------------------------------------------------------------------------
# Each score's definition


def test_mel_l1_is_zero_for_itself_and_pads_with_the_floor():
    mel = np.random.default_rng(0).normal(-4.0, 2.0, (300, 128)).astype(np.float32)
    assert mel_l1(mel, mel) == 0.0
    assert mel_l1(mel, mel + 0.5) == pytest.approx(0.5)
    silence = np.full((10, 128), 0.0)
    # 5 frames missing count as silence (ln 1e-5) against the other's 0.0: half the frames differ by 11.51.
    assert mel_l1(silence[:5], silence) == pytest.approx(-MIN_LOG_MEL / 2)
    assert mel_l1(silence, silence[:5]) == mel_l1(silence[:5], silence)
    with pytest.raises(ValueError, match="128"):
        mel_l1(mel[:, :64], mel)


def _textured_mel(frames: int, seed: int = 0) -> np.ndarray:
    """A spectrogram that keeps changing a little from frame to frame, as music does."""
    rng = np.random.default_rng(seed)
    return (
        -5.0
        + np.cumsum(rng.normal(0.0, 0.3, (frames, 128)), axis=0) * 0.2
        + rng.normal(0, 0.3, (frames, 128))
    )


def test_seam_score_finds_an_artificial_jump_at_frame_256():
    mel = _textured_mel(768)
    assert seam_score(mel) == pytest.approx(1.0, abs=0.15)
    jumped = mel.copy()
    jumped[256:512] += 2.0  # a level jump where segment 2 starts, and back where segment 3 starts
    assert seam_score(jumped) > 3.0
    one_frame_late = mel.copy()
    one_frame_late[257:] += 2.0  # a jump away from the boundary is not a seam
    assert seam_score(one_frame_late) < 1.3


def test_seam_score_needs_a_boundary():
    assert seam_score(_textured_mel(256)) is None  # one whole segment: no boundary inside
    assert seam_score(_textured_mel(100)) is None
    assert seam_score(_textured_mel(259)) is not None
    assert seam_score(np.full((600, 128), MIN_LOG_MEL)) is None  # silence never changes


def test_reference_notes_leave_out_drums_muted_tracks_and_doubled_notes():
    song = Song([
        Track([Note(60, 0.0, 1.0), Note(64, 0.5, 1.5)]),
        Track([Note(60, 0.001, 0.5), Note(67, 2.0, 3.0)], program=40),  # 60 doubles track 1's, 1 ms apart
        Track([Note(36, 0.0, 0.1), Note(38, 1.0, 1.1)], channel=9),  # drums
    ])  # fmt: skip
    score = read_midi(song.to_bytes())
    notes = reference_notes(score)
    assert notes[:, 2].tolist() == [60, 64, 67] and notes[:, 0].tolist() == pytest.approx([0.0, 0.5, 2.0])
    assert notes[0, 1] == pytest.approx(1.0)  # the longer of the doubled notes
    assert reference_notes(score, Remap(mute=frozenset({2})))[:, 2].tolist() == [60, 64]


def test_note_scores_onset_pitch_tolerances_and_duration():
    ref = np.array([[0.0, 0.5, 60], [1.0, 1.5, 62], [2.0, 2.5, 64], [9.99, 10.5, 65]], float)
    assert note_scores(ref, ref).f1 == 1.0
    close = ref + [0.04, 0.3, 0]  # onsets 40 ms late, offsets anywhere: all found
    assert note_scores(ref, close).f1 == 1.0
    late = ref + [0.06, 0.0, 0]
    assert note_scores(ref, late).f1 == 0.0
    assert note_scores(ref, ref + [0, 0, 1]).f1 == 0.0
    half = note_scores(ref, ref[:2])
    assert (half.precision, half.recall, half.matched) == (1.0, 0.5, 2)
    # 10 s of audio: the note struck at 9.99 s is not counted, on either side.
    clipped = note_scores(ref, ref[:3], duration=10.0)
    assert clipped.f1 == 1.0 and clipped.reference == 3
    assert note_scores(ref, ref[:0]).f1 == 0.0
    nothing = note_scores(ref[:0], ref)
    assert nothing.f1 is None and nothing.precision is None


@needs_fluidsynth
def test_transcribe_finds_the_notes_and_prints_nothing(capsys):
    song = Song([Track([Note(60, 0.5, 1.5), Note(67, 2.0, 3.0)])])
    audio = _render(read_midi(song.to_bytes()), None)
    notes = transcribe(audio, SR)
    assert capsys.readouterr().out == ""  # basic_pitch's "Predicting MIDI for ..." is swallowed
    assert notes.shape[1] == 3 and notes.dtype == np.float64
    assert {60, 67} <= set(notes[:, 2].astype(int))  # and maybe a harmonic (72 and 79 are)
    for pitch, onset in ((60, 0.5), (67, 2.0)):
        assert np.abs(notes[notes[:, 2] == pitch, 0] - onset).min() < 0.02
    at_44k = soundfont.render_score(read_midi(song.to_bytes()), soundfont.default_soundfont(), 44100).audio
    assert {60, 67} <= set(transcribe(at_44k, 44100)[:, 2].astype(int))
    assert transcribe(np.zeros(0, np.float32), SR).shape == (0, 3)


def test_basic_pitch_is_imported_without_tensorflow():
    modules = "('tensorflow', 'coremltools')"
    code = (
        "import sys; from spectrosynth.evaluation import default_transcriber; t = default_transcriber(); "
        f"print(t._model.model_type.name, *(sys.modules.get(m, '-') for m in {modules}))"
    )
    # CI=true as CI services set it: FluidSynth's binding then prints to stdout unless silenced
    env = {**os.environ, "CI": "true"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["ONNX", "-", "-"]  # not imported, and not left hidden (None) either
    assert "Coremltools" not in out.stderr and "tflite" not in out.stderr.lower()


def test_onnx_even_when_basic_pitch_was_imported_with_tensorflow_around(monkeypatch):
    from spectrosynth.evaluation.transcription import Transcriber, _import_basic_pitch

    basic_pitch, _ = _import_basic_pitch()
    monkeypatch.setattr(basic_pitch, "TF_PRESENT", True)  # as if imported elsewhere, TensorFlow found
    transcriber = Transcriber()
    assert transcriber._model.model_type.name == "ONNX"
    assert transcriber(np.zeros(SR, np.float32), SR).shape == (0, 3)


def test_missing_basic_pitch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "basic_pitch", None)
    monkeypatch.setattr(transcription, "_DEFAULT", None)
    with pytest.raises(SpectrosynthError, match="basic-pitch") as info:
        transcription.default_transcriber()
    assert INSTALL in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def folders(tmp_path_factory, waltz_score, truth):
    """midi/{waltzes1.mid, sub/xmas1.mid}, their renders in audio/ (FLAC and WAV), the same in ref/."""
    root = tmp_path_factory.mktemp("evaluate")
    data = waltz_score.source.rsplit("/", 1)[0]
    (root / "midi" / "sub").mkdir(parents=True)
    (root / "midi" / "waltzes1.mid").write_bytes(open(waltz_score.source, "rb").read())
    (root / "midi" / "sub" / "xmas1.mid").write_bytes(open(f"{data}/xmas1.mid", "rb").read())
    xmas = _render(read_midi(root / "midi" / "sub" / "xmas1.mid"), 8 * SR)
    for name in ("audio", "ref"):
        (root / name / "sub").mkdir(parents=True)
        sf.write(root / name / "waltzes1.flac", truth, SR)
        sf.write(root / name / "sub" / "xmas1.wav", xmas, SR, subtype="FLOAT")
    return root


def evaluate(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


FILE_KEYS = {"input", "audio", "note_f1", "precision", "recall", "seam"}


@needs_fluidsynth
def test_cli_table(folders):
    result = evaluate(folders / "midi", folders / "audio")
    assert result.exit_code == 0, result.output
    for text in ("note F1", "precision", "seam", "waltzes1.mid", "xmas1.mid", "mean of 2"):
        assert text in result.stdout
    assert "mel L1" not in result.stdout
    assert "[2/2] waltzes1.mid: note F1" in result.stderr  # progress, one line per file off a terminal


@needs_fluidsynth
def test_cli_json_schema(folders):
    result = evaluate(folders / "midi", folders / "audio", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"files", "mean"} and result.stderr == ""
    assert [f["input"] for f in report["files"]] == [str(folders / "midi" / "sub" / "xmas1.mid"),
                                                     str(folders / "midi" / "waltzes1.mid")]  # fmt: skip
    assert report["files"][1]["audio"] == str(folders / "audio" / "waltzes1.flac")
    assert all(set(f) == FILE_KEYS for f in report["files"])
    assert set(report["mean"]) == {"note_f1", "seam"}
    assert report["mean"]["note_f1"] == pytest.approx(np.mean([f["note_f1"] for f in report["files"]]))
    assert report["files"][1]["note_f1"] > 0.75 and report["files"][0]["note_f1"] > 0.6
    assert report["files"][0]["seam"] is not None  # 8 s: one boundary


@needs_fluidsynth
def test_cli_reference_adds_mel_l1(folders, tmp_path):
    result = evaluate(folders / "midi", folders / "audio", "--reference", folders / "ref", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [f["mel_l1"] for f in report["files"]] == [0.0, 0.0] and report["mean"]["mel_l1"] == 0.0
    assert all(set(f) == FILE_KEYS | {"mel_l1"} for f in report["files"])
    table = evaluate(folders / "midi", folders / "audio", "--reference", folders / "ref")
    assert table.exit_code == 0 and "mel L1" in table.stdout


@needs_fluidsynth
def test_cli_single_files(folders):
    midi, audio = folders / "midi" / "sub" / "xmas1.mid", folders / "audio" / "sub" / "xmas1.wav"
    result = evaluate(midi, audio, "--json")
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert [(f["input"], f["audio"]) for f in files] == [(str(midi), str(audio))]
    beside = evaluate(midi, folders / "audio" / "sub", "--json")  # a MIDI file and the folder of its audio
    assert json.loads(beside.stdout)["files"] == files


@needs_fluidsynth
def test_cli_missing_and_unreadable_files_are_one_line_each(folders, tmp_path):
    midi = tmp_path / "midi"
    (midi / "sub").mkdir(parents=True)
    for rel in ("waltzes1.mid", "sub/xmas1.mid"):
        (midi / rel).write_bytes((folders / "midi" / rel).read_bytes())
    (midi / "lonely.mid").write_bytes((folders / "midi" / "waltzes1.mid").read_bytes())
    (midi / "broken.midi").write_bytes(b"not a MIDI file")
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    (audio / "waltzes1.flac").write_bytes((folders / "audio" / "waltzes1.flac").read_bytes())
    (audio / "sub" / "xmas1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (audio / "broken.wav").write_bytes((folders / "audio" / "waltzes1.flac").read_bytes())  # fine audio
    result = evaluate(midi, audio, "--json", "--quiet")
    assert result.exit_code == 1
    assert [f["input"] for f in json.loads(result.stdout)["files"]] == [str(midi / "waltzes1.mid")]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("spectrosynth: error: ") for line in errors)
    assert f"{midi / 'broken.midi'}: not a MIDI file" in errors[0]
    assert f"{midi / 'lonely.mid'}: no audio for it in {audio} (lonely.wav/.flac/.ogg/.mp3)" in errors[1]
    assert f"{audio / 'sub' / 'xmas1.wav'}: " in errors[2]
    assert errors[3] == "spectrosynth: error: 3 of 4 files could not be scored (listed above)"


def test_cli_folders_that_do_not_exist_or_hold_no_midi(tmp_path):
    result = evaluate(tmp_path / "nope", tmp_path)
    assert result.exit_code == 1
    message = f"{tmp_path / 'nope'}: no such file or folder; give the MIDI folder or file"
    assert result.stderr == f"spectrosynth: error: {message}\n"
    result = evaluate(tmp_path, tmp_path / "nope")
    assert result.exit_code == 1 and f"{tmp_path / 'nope'}: no such file or folder" in result.stderr
    (tmp_path / "notes.txt").write_text("no MIDI here")
    result = evaluate(tmp_path, tmp_path)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert f"no MIDI files (.mid, .midi) in {tmp_path}" in result.stderr
    midi = tmp_path / "a.mid"
    midi.write_bytes(Song([Track([Note(60, 0.0, 1.0)])]).to_bytes())
    result = evaluate(tmp_path, midi)
    assert result.exit_code == 1 and "is a file, but" in result.stderr


def test_cli_missing_transcriber_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "basic_pitch", None)
    monkeypatch.setattr(transcription, "_DEFAULT", None)
    midi = tmp_path / "a.mid"
    midi.write_bytes(Song([Track([Note(60, 0.0, 1.0)])]).to_bytes())
    result = evaluate(midi, midi)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and INSTALL in result.stderr
