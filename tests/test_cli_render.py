"""`spectrosynth render`, `batch` and `download` end to end with the tiny test checkpoint."""

import io
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from spectrosynth.cli import app

runner = CliRunner()
TAIL = 1.0  # the default --tail


@pytest.fixture
def model_args(tiny_model):
    return ["--model", str(tiny_model), "--device", "cpu", "--steps", "2"]


def render(*args, **kwargs):
    return runner.invoke(app, ["render", *map(str, args)], **kwargs)


def leftovers(folder):
    """Hidden temporaries or partial files left in a folder."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part"]


# --------------------------------------------------------------------------------------------------------
# Formats, rates, lengths


@pytest.mark.parametrize(
    "name,extra,subtype",
    [
        ("a.wav", [], "PCM_16"),
        ("a.wav", ["--bit-depth", "24"], "PCM_24"),
        ("a.wav", ["--bit-depth", "32"], "FLOAT"),
        ("a.flac", [], "PCM_16"),
        ("a.flac", ["--bit-depth", "24"], "PCM_24"),
        ("a.out", ["--format", "flac"], "PCM_16"),
    ],
)
def test_formats_and_bit_depths(tmp_path, waltz, model_args, name, extra, subtype):
    out = tmp_path / name
    result = render(waltz, out, *model_args, "--duration", "6", *extra)
    assert result.exit_code == 0, result.output
    info = sf.info(out)
    assert info.samplerate == 16000 and info.subtype == subtype and info.channels == 1
    assert info.frames == round((6 + TAIL) * 16000)  # a 6 s preview and the tail
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("rate", [44100, 48000])
def test_resampling(tmp_path, waltz, model_args, rate):
    out = tmp_path / "a.wav"
    result = render(waltz, out, *model_args, "--duration", "4", "--sample-rate", rate)
    assert result.exit_code == 0, result.output
    info = sf.info(out)
    assert info.samplerate == rate
    assert abs(info.frames - round((4 + TAIL) * rate)) <= 1


def test_whole_segments_without_trim(tmp_path, waltz, model_args):
    out = tmp_path / "a.wav"
    assert render(waltz, out, *model_args, "--duration", "6", "--no-trim").exit_code == 0
    assert sf.info(out).frames == 2 * 81920  # a 6 s preview is 2 segments of 5.12 s


def test_same_seed_same_audio(tmp_path, waltz, model_args):
    a, b, c = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "c.wav"
    for out, seed in ((a, 5), (b, 5), (c, 6)):
        assert render(waltz, out, *model_args, "--duration", "3", "--seed", seed).exit_code == 0
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()


def test_stdin_to_stdout(tmp_path, waltz, model_args):
    result = render("-", "-", *model_args, "--duration", "3", "--format", "flac", input=waltz.read_bytes())
    assert result.exit_code == 0, result.stderr
    audio, rate = sf.read(io.BytesIO(result.stdout_bytes), dtype="float32")
    assert rate == 16000 and len(audio) == round((3 + TAIL) * 16000)


def test_stdout_needs_a_format(waltz, model_args):
    result = render(waltz, "-", *model_args)
    assert result.exit_code == 1 and "--format" in result.stderr


def test_mel_out_matches_the_audio(tmp_path, waltz, model_args):
    out, mel = tmp_path / "a.wav", tmp_path / "a.npy"
    assert render(waltz, out, *model_args, "--duration", "6", "--mel-out", mel).exit_code == 0
    spectrogram = np.load(mel)
    assert spectrogram.dtype == np.float32 and spectrogram.shape == (-(-sf.info(out).frames // 320), 128)
    assert np.log(1e-5) - 1e-4 <= spectrogram.min() and spectrogram.max() <= 4.0 + 1e-4


# --------------------------------------------------------------------------------------------------------
# Samplers and guidance


def _api_mel(tiny_synth, midi, duration, **options):
    from spectrosynth.midi import read_midi
    from spectrosynth.tokens import prepare

    song = prepare(read_midi(midi), length=duration)
    return tiny_synth.generate_mel([s.tokens for s in song.segments], seed=0, **options)


@pytest.mark.parametrize(
    "args,options",
    [
        ([], {}),  # the defaults: unipc, 20 steps, guidance 2
        (["--sampler", "diffusers", "--guidance", "1", "--steps", "3"],
         {"sampler": "diffusers", "guidance": 1.0, "steps": 3}),
        (["--sampler", "ddpm", "--steps", "4", "-g", "5"], {"sampler": "ddpm", "guidance": 5.0, "steps": 4}),
        (["--sampler", "dpmpp-2m-sde", "--steps", "3"], {"sampler": "dpmpp-2m-sde", "steps": 3}),
    ],
)  # fmt: skip
def test_sampler_options_reach_the_engine(tmp_path, tiny_model, tiny_synth, waltz, args, options):
    out, mel = tmp_path / "a.wav", tmp_path / "a.npy"
    result = render(waltz, out, "--model", tiny_model, "--device", "cpu", "--dtype", "float32",
                    "--duration", "3", "--mel-out", mel, *args)  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = _api_mel(tiny_synth, waltz, 3.0, **options)
    np.testing.assert_array_equal(np.load(mel), expected[: len(np.load(mel))])


def test_batch_takes_the_sampler_options(tmp_path, tiny_model, tiny_synth, waltz):
    (tmp_path / "in").mkdir()
    shutil.copy(waltz, tmp_path / "in" / "a.mid")
    args = ["--model", tiny_model, "--device", "cpu", "--dtype", "float32", "--duration", "3", "--save-mel"]
    result = batch(tmp_path / "in", tmp_path / "out", *args, "--sampler", "ddim", "--steps", "3", "-g", "3")
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "out" / "a.npy")
    expected = _api_mel(tiny_synth, waltz, 3.0, sampler="ddim", steps=3, guidance=3.0)
    np.testing.assert_allclose(saved, expected[: len(saved)], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--sampler", "euler"], 2, "'euler' is not one of"),
        (["--guidance", "-1"], 2, "--guidance"),
        (["--steps", "20000"], 2, "--steps"),
        (["--sampler", "diffusers", "--steps", "1001"], 1, "the diffusers sampler takes at most 1000 steps"),
    ],
)
def test_bad_sampler_options_are_one_line_errors(tmp_path, waltz, tiny_model, args, code, message):
    for command in (render, batch):
        target = tmp_path / ("a.wav" if command is render else "out")
        result = command(waltz if command is render else tmp_path, target, "--model", tiny_model, *args)
        assert result.exit_code == code, result.output
        assert message in result.stderr and result.stderr.count("\n") == 1
        assert not target.exists()


def test_preview_window_from_the_middle(tmp_path, waltz, model_args):
    out = tmp_path / "a.wav"
    assert render(waltz, out, *model_args, "--start", "90", "--duration", "20").exit_code == 0
    assert sf.info(out).frames == round((97.5 - 90 + TAIL) * 16000)  # the song ends at 97.5 s


def test_start_past_the_end_is_an_error(tmp_path, waltz, model_args):
    result = render(waltz, tmp_path / "a.wav", *model_args, "--start", "500")
    assert result.exit_code == 1 and "past the end" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# Level


def test_normalize_to_minus_one_dbfs(tmp_path, waltz, model_args):
    out = tmp_path / "a.wav"
    args = [*model_args, "--duration", "3", "--bit-depth", "32", "--normalize"]
    assert render(waltz, out, *args).exit_code == 0
    audio, _ = sf.read(out, dtype="float32")
    assert np.abs(audio).max() == pytest.approx(10 ** (-1 / 20), rel=1e-4)


def test_gain_in_db(tmp_path, waltz, model_args):
    quiet, loud = tmp_path / "q.wav", tmp_path / "l.wav"
    base = [*model_args, "--duration", "3", "--bit-depth", "32", "--clip", "none"]
    assert render(waltz, quiet, *base, "--gain", "-12").exit_code == 0
    assert render(waltz, loud, *base, "--gain", "-6").exit_code == 0
    a, _ = sf.read(quiet, dtype="float32")
    b, _ = sf.read(loud, dtype="float32")
    np.testing.assert_allclose(b, a * 10 ** (6 / 20), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# Instruments


def test_program_remap_is_visible_in_the_tokens(waltz):
    plain = json.loads(runner.invoke(app, ["inspect", str(waltz), "--json", "--tokens"]).stdout)
    result = runner.invoke(app, ["inspect", str(waltz), "--json", "--tokens", "--program", "0=violin"])
    remapped = json.loads(result.stdout)
    flat = [t for seg in remapped["tokens"] for t in seg]
    assert 1135 not in flat and 1175 in flat  # program 0 -> program 40
    assert [[1175 if t == 1135 else t for t in seg] for seg in plain["tokens"]] == remapped["tokens"]
    assert {t["program"] for t in remapped["tracks"]} == {40}
    assert {t["source_program"] for t in remapped["tracks"]} == {0}


def test_mute_and_no_drums_in_inspect(complex_midi):
    result = runner.invoke(
        app, ["inspect", str(complex_midi), "--json", "--tokens", "--no-drums", "--mute", "1,2"]
    )
    report = json.loads(result.stdout)
    assert [t["track"] for t in report["tracks"] if t["muted"]] == [1, 2, 4]
    assert not any(1263 <= t <= 1390 for seg in report["tokens"] for t in seg)  # no drum tokens left


def test_render_tells_which_class_a_program_becomes(tmp_path, waltz, model_args):
    result = render(waltz, tmp_path / "a.wav", *model_args, "--duration", "2", "--track", "1=45")
    assert result.exit_code == 0, result.output
    assert "Contrabass (class 43)" in result.stderr


def test_unknown_program_name(tmp_path, waltz, model_args):
    result = render(waltz, tmp_path / "a.wav", *model_args, "--program", "0=vilin")
    assert result.exit_code == 1 and "unknown program 'vilin'" in result.stderr
    assert result.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# Progress


def test_plain_progress_lines_when_not_a_terminal(tmp_path, waltz, model_args):
    result = render(waltz, tmp_path / "a.wav", *model_args, "--duration", "8")
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("waltzes1.mid: segment")]
    assert len(lines) == 2 and lines[-1].startswith("waltzes1.mid: segment 2/2 (100%)")
    assert "elapsed" in lines[-1] and "ETA" in lines[-1] and "x real time" in lines[-1]
    assert "wrote" in result.stderr


def test_quiet_prints_nothing(tmp_path, waltz, model_args):
    result = render(waltz, tmp_path / "a.wav", *model_args, "--duration", "3", "--quiet")
    assert result.exit_code == 0 and result.stderr == "" and result.stdout == ""


# --------------------------------------------------------------------------------------------------------
# Errors and files


def test_existing_output_needs_force(tmp_path, waltz, model_args):
    out = tmp_path / "a.wav"
    out.write_bytes(b"precious")
    result = render(waltz, out, *model_args, "--duration", "2")
    assert result.exit_code == 1 and "-f/--force" in result.stderr
    assert out.read_bytes() == b"precious"
    assert render(waltz, out, *model_args, "--duration", "2", "--force").exit_code == 0
    assert sf.info(out).frames == round((2 + TAIL) * 16000)


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--steps", "0"], 2, "--steps"),
        (["--bit-depth", "8"], 2, "--bit-depth"),
        (["--clip", "soft"], 2, "--clip"),
        (["--format", "ogg"], 2, "--format"),
        (["--sample-rate", "100"], 2, "--sample-rate"),
        (["--frobnicate"], 2, "No such option"),
        (["--dtype", "int4"], 1, "unknown dtype"),
        (["--device", "cuda"], 1, "--device cpu"),
        (["--format", "flac", "--bit-depth", "32"], 1, "FLAC holds at most 24 bits"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, waltz, model_args, args, code, message):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = render(waltz, tmp_path / "a.wav", *model_args, *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith("spectrosynth: error: ") and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("problem", ["missing-midi", "not-midi", "missing-folder", "unknown-model"])
def test_input_and_model_errors_leave_nothing_behind(tmp_path, waltz, model_args, problem):
    midi, out, args = waltz, tmp_path / "a.wav", list(model_args)
    if problem == "missing-midi":
        midi = tmp_path / "nope.mid"
    elif problem == "not-midi":
        midi = tmp_path / "text.mid"
        midi.write_text("hello")
    elif problem == "missing-folder":
        out = tmp_path / "no" / "such" / "a.wav"
    else:
        args[1] = str(tmp_path / "no-model")
    result = render(midi, out, *args)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_ctrl_c_leaves_no_partial_file(tmp_path, waltz, model_args, monkeypatch):
    from spectrosynth.pipeline import Synthesizer

    real = Synthesizer.iter_parts  # what render samples with (one part: the song)

    def interrupted(self, *args, **kwargs):
        for i, mels in enumerate(real(self, *args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt
            yield mels

    monkeypatch.setattr(Synthesizer, "iter_parts", interrupted)
    out = tmp_path / "a.wav"
    out.write_bytes(b"old take")
    result = render(waltz, out, *model_args, "--force")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert out.read_bytes() == b"old take" and leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------------
# batch


@pytest.fixture
def midi_tree(tmp_path, waltz, complex_midi):
    """in/a.mid, in/sub/b.MIDI, in/sub/broken.mid (not MIDI), in/notes.txt (ignored)."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(waltz, root / "a.mid")
    shutil.copy(waltz, root / "sub" / "b.MIDI")
    (root / "sub" / "broken.mid").write_bytes(b"MThd garbage")
    (root / "notes.txt").write_text("not music")
    return root


def batch(*args):
    return runner.invoke(app, ["batch", *map(str, args)])


def test_batch_mirrors_the_tree_goes_past_a_bad_file_and_resumes(tmp_path, midi_tree, model_args):
    out = tmp_path / "out"
    args = [midi_tree, out, *model_args, "--duration", "2", "--format", "flac"]
    first = batch(*args)
    assert first.exit_code == 1  # one file failed
    outputs = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert sorted(p for p in outputs if not p.startswith(".spectrosynth/")) == ["a.flac", "sub/b.flac"]
    assert "broken.mid" in first.stderr and "batch finished" in first.stderr

    stamp = (out / "a.flac").stat().st_mtime_ns
    again = batch(*args)  # resumes: existing outputs are skipped, and so is the file that failed
    assert again.exit_code == 0 and again.stderr.count(": skipped, ") == 3
    assert "sub/broken.mid: skipped, it failed before" in again.stderr and "--retry-failed" in again.stderr
    assert (out / "a.flac").stat().st_mtime_ns == stamp
    retried = batch(*args, "--retry-failed")
    assert retried.exit_code == 1 and retried.stderr.count(": skipped, ") == 2

    (midi_tree / "sub" / "broken.mid").unlink()
    forced = batch(*args, "--force")
    assert forced.exit_code == 0 and ": skipped, " not in forced.stderr
    assert (out / "a.flac").stat().st_mtime_ns != stamp


def test_batch_summary_counts(tmp_path, midi_tree, model_args):
    result = batch(midi_tree, tmp_path / "out", *model_args, "--duration", "2")
    rows = [line for line in result.stderr.splitlines() if "6.0 s" in line]  # 2 files x (2 s + 1 s tail)
    assert len(rows) == 1
    cells = rows[0].replace("│", " ").split()
    assert cells[:3] == ["2", "0", "1"]  # rendered, skipped, failed


def test_batch_saves_mels_when_asked(tmp_path, midi_tree, model_args):
    (midi_tree / "sub" / "broken.mid").unlink()
    out = tmp_path / "out"
    assert batch(midi_tree, out, *model_args, "--duration", "2", "--save-mel").exit_code == 0
    assert (out / "a.npy").exists() and (out / "sub" / "b.npy").exists()


def test_batch_errors(tmp_path, model_args):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert batch(tmp_path / "missing", tmp_path / "o", *model_args).exit_code == 1
    result = batch(empty, tmp_path / "o", *model_args)
    assert result.exit_code == 1 and "no .mid or .midi files" in result.stderr


def test_batch_stops_at_once_if_the_model_cannot_load(tmp_path, midi_tree):
    result = batch(midi_tree, tmp_path / "out", "--model", tmp_path / "no-model", "--device", "cpu")
    assert result.exit_code == 1 and "no such model folder" in result.stderr
    assert result.stderr.count("error") == 1


# --------------------------------------------------------------------------------------------------------
# download


def test_download_verifies_a_local_model(tiny_model):
    result = runner.invoke(app, ["download", "--model", str(tiny_model)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tiny_model) and "complete and checked" in result.stderr


def test_download_reports_a_damaged_model(tmp_path, tiny_model):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "decoder" / "diffusion_pytorch_model.bin").write_bytes(b"oops")
    result = runner.invoke(app, ["download", "--model", str(broken)])
    assert result.exit_code == 1 and "decoder" in result.stderr and result.stderr.count("\n") == 1


def test_batch_reports_name_clashes_hidden_files_and_short_songs(tmp_path, waltz, model_args):
    root = tmp_path / "in"
    (root / ".cache").mkdir(parents=True)
    shutil.copy(waltz, root / "song.mid")
    shutil.copy(waltz, root / "song.midi")  # same output name as song.mid
    shutil.copy(waltz, root / "._song.mid")  # macOS metadata: skipped
    shutil.copy(waltz, root / ".cache" / "x.mid")  # hidden folder: skipped
    short = root / "short.mid"
    short.write_bytes(waltz.read_bytes())
    result = batch(root, tmp_path / "out", *model_args, "--start", "90", "--duration", "2")
    assert result.exit_code == 1
    assert "already renders to" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".spectrosynth", "short.wav", "song.wav"]


def test_batch_start_past_the_end_fails_only_that_song(tmp_path, waltz, complex_midi, model_args):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(waltz, root / "a.mid")  # 97.5 s long
    shutil.copy(complex_midi, root / "b.mid")  # 293.8 s long
    result = batch(root, tmp_path / "out", *model_args, "--start", "200", "--duration", "2")
    assert result.exit_code == 1 and "past the end" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".spectrosynth", "b.wav"]


def test_output_that_is_a_folder(tmp_path, waltz, model_args):
    result = render(waltz, tmp_path, *model_args)
    assert result.exit_code == 1 and "is a folder" in result.stderr


def test_format_is_case_insensitive(tmp_path, waltz, model_args):
    out = tmp_path / "a.flac"
    assert render(waltz, out, *model_args, "--duration", "2", "--format", "FLAC").exit_code == 0
    assert sf.info(out).format == "FLAC"


def test_a_tail_cut_short_by_the_last_segment_is_noted(tmp_path, waltz, model_args):
    # A 5 s preview renders 1 segment (5.12 s): only 0.12 s are left for a 1 s tail.
    result = render(waltz, tmp_path / "a.wav", *model_args, "--duration", "5")
    assert result.exit_code == 0 and "the tail is 0.12 s, not 1 s" in result.stderr
    assert sf.info(tmp_path / "a.wav").frames == 81920


def test_muting_everything_is_noted(tmp_path, waltz, model_args):
    result = render(waltz, tmp_path / "a.wav", *model_args, "--mute", "1,2", "--duration", "2")
    assert result.exit_code == 0 and "no notes left to play" in result.stderr


# --------------------------------------------------------------------------------------------------------
# --vocoder


@pytest.fixture
def scratch_model(tmp_path, tiny_model):
    """The tiny model without melgan/, as `spectrosynth train` from scratch leaves one."""
    folder = tmp_path / "scratch-model"
    shutil.copytree(tiny_model, folder)
    shutil.rmtree(folder / "melgan")
    return folder


def test_vocoder_griffin_lim_writes_a_wav_from_the_same_mel(tmp_path, waltz, model_args):
    audio, mels = {}, {}
    for vocoder in ("model", "griffin-lim"):
        out, mel = tmp_path / f"{vocoder}.wav", tmp_path / f"{vocoder}.npy"
        result = render(waltz, out, *model_args, "--duration", "3", "--vocoder", vocoder, "--mel-out", mel)
        assert result.exit_code == 0, result.output
        assert ("griffin-lim vocoder" in result.stderr) == (vocoder == "griffin-lim")
        audio[vocoder], rate = sf.read(out, dtype="float32")
        assert rate == 16000 and len(audio[vocoder]) == round((3 + TAIL) * 16000)
        mels[vocoder] = np.load(mel)
    np.testing.assert_array_equal(mels["model"], mels["griffin-lim"])  # the vocoder changes only the audio
    assert np.abs(audio["griffin-lim"]).max() > 0.01
    assert not np.array_equal(audio["model"], audio["griffin-lim"])


def test_vocoder_a_model_without_melgan_needs_griffin_lim(tmp_path, waltz, scratch_model):
    args = ["--model", scratch_model, "--device", "cpu", "--steps", "2", "--duration", "2"]
    out = tmp_path / "a.wav"
    result = render(waltz, out, *args)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert "has no vocoder (melgan/model.onnx)" in result.stderr and "--vocoder griffin-lim" in result.stderr
    assert not out.exists()
    result = render(waltz, out, *args, "--vocoder", "griffin-lim")
    assert result.exit_code == 0, result.output
    assert sf.info(out).frames == round((2 + TAIL) * 16000)


def test_vocoder_a_bad_name_is_a_usage_error(tmp_path, waltz, tiny_model):
    for command in (render, batch):
        target = tmp_path / ("a.wav" if command is render else "out")
        result = command(waltz if command is render else tmp_path, target, "--model", tiny_model,
                         "--vocoder", "wavenet")  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "'wavenet' is not one of" in result.stderr and result.stderr.count("\n") == 1
        assert not target.exists()


def test_vocoder_batch_records_it_and_a_resume_with_another_is_refused(tmp_path, waltz, scratch_model):
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    shutil.copy(waltz, root / "a.mid")
    args = [root, out, "--model", scratch_model, "--device", "cpu", "--steps", "2", "--duration", "2"]
    first = batch(*args, "--vocoder", "griffin-lim")
    assert first.exit_code == 0, first.output
    assert sf.info(out / "a.wav").frames == round((2 + TAIL) * 16000)
    run = json.loads((out / ".spectrosynth" / "run.json").read_text())
    assert run["settings"]["vocoder"] == "griffin-lim"
    again = batch(*args)  # the default vocoder: the model's own
    assert again.exit_code == 1 and again.stderr.count("\n") == 1, again.output
    assert "vocoder 'griffin-lim' -> 'model'" in again.stderr and "--force" in again.stderr
