import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from spectrosynth.cli import app

runner = CliRunner()


def test_help_lists_commands_and_imports_nothing_heavy():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "inspect" in result.output
    heavy = "('torch', 'numpy', 'pretty_midi', 'mido')"
    code = f"import sys, spectrosynth.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inspect_text_shows_tracks_classes_and_segments(complex_midi):
    result = runner.invoke(app, ["inspect", str(complex_midi)])
    assert result.exit_code == 0, result.output
    assert "58 segments" in result.output
    assert "Distorted Electric Guitar (29)" in result.output  # program 30 renders as class 29
    assert "drums" in result.output and "longest segment 833 of 2048" in result.output


def test_inspect_json_is_stable_and_complete(complex_midi):
    result = runner.invoke(app, ["inspect", str(complex_midi), "--json"])
    report = json.loads(result.output)
    assert report["schema"] == "spectrosynth.inspect/1"
    assert report["segments"] == 58 and report["longest_segment_tokens"] == 833
    assert "tokens" not in report
    track = report["tracks"][6]
    assert track == {
        "track": 7, "name": "", "channel": 7, "program": 30, "program_name": "Distortion Guitar",
        "is_drum": False, "notes": 484, "model_class": 29, "model_class_name": "Distorted Electric Guitar",
        "muted": False, "source_program": None, "pan": 88, "volume": 117, "expression": 127,
        "pan_automated": False, "level_automated": True, "automation_events": 67,
        "stem": "07-guitar-distortion-guitar",
    }  # fmt: skip
    drums = [t for t in report["tracks"] if t["is_drum"]]
    assert drums[0]["channel"] == 10 and drums[0]["model_class"] is None


def test_inspect_tokens_from_stdin(waltz):
    result = runner.invoke(app, ["inspect", "-", "--json", "--tokens"], input=waltz.read_bytes())
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["file"] == "<stdin>"
    assert len(report["tokens"]) == report["segments"] == 20
    assert all(seg[-1] == 1 and 0 not in seg for seg in report["tokens"])


def test_inspect_text_tokens(waltz):
    result = runner.invoke(app, ["inspect", str(waltz), "--tokens"])
    assert result.exit_code == 0 and "segment 19 (" in result.output


def test_bad_input_is_one_line_exit_1_without_traceback(tmp_path):
    bad = tmp_path / "notes.mid"
    bad.write_text("not midi")
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"spectrosynth: error: {bad}: not a MIDI file")
    assert "Traceback" not in result.output


def test_debug_variable_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.mid")], env={"SPECTROSYNTH_DEBUG": "1"})
    assert result.exit_code == 1 and type(result.exception).__name__ == "MidiError"


def test_unknown_option_is_a_usage_error(waltz):
    result = runner.invoke(app, ["inspect", str(waltz), "--colour"])
    assert result.exit_code == 2


def test_console_script_runs(waltz):
    # CI=true as CI services set it: the FluidSynth binding then prints to stdout unless silenced
    out = subprocess.run([sys.executable, "-m", "spectrosynth.cli", "inspect", str(waltz), "--json"],
                         capture_output=True, text=True, env={**os.environ, "CI": "true"})  # fmt: skip
    assert out.returncode == 0 and json.loads(out.stdout)["segments"] == 20


def test_render_writes_wav_and_mel(tmp_path, tiny_model, waltz):
    import numpy as np
    import soundfile as sf

    out, mel = tmp_path / "waltz.wav", tmp_path / "waltz.npy"
    args = ["render", str(waltz), str(out), "--model", str(tiny_model), "--device", "cpu", "--steps", "2"]
    result = runner.invoke(app, [*args, "--seed", "3", "--mel-out", str(mel)])
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(out, dtype="float32")
    spectrogram = np.load(mel)
    # The audio ends --tail (1 s) after the last note (97.5 s), not on the 20th segment's boundary.
    assert rate == 16000 and audio.shape == (round(98.5 * 16000),)
    assert spectrogram.dtype == np.float32 and spectrogram.shape == (-(-len(audio) // 320), 128)


def test_render_with_a_missing_model_folder_fails_cleanly(tmp_path, waltz):
    result = runner.invoke(
        app, ["render", str(waltz), str(tmp_path / "o.wav"), "--model", str(tmp_path / "none")]
    )
    assert result.exit_code == 1 and "no such model folder" in result.stderr
    assert not (tmp_path / "o.wav").exists()


def test_no_arguments_shows_the_help():
    result = runner.invoke(app, [])
    assert result.exit_code == 0 and "render" in result.stdout and "error" not in result.output


def test_debug_variable_zero_means_off(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.mid")], env={"SPECTROSYNTH_DEBUG": "0"})
    assert result.exit_code == 1 and result.stderr.startswith("spectrosynth: error: ")
