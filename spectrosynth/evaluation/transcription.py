"""Audio -> notes with Spotify's basic-pitch (Bittner et al., ICASSP 2022), its ONNX model run by onnxruntime.

basic-pitch is the measure's transcriber because it is instrument-agnostic (trained on guitar, voice, piano
and Slakh's synthesized multi-instrument mixes), polyphonic, small (under 17 000 parameters; about a second
for 15 s of audio on a CPU) and ships an ONNX export, so it runs on onnxruntime, which spectrosynth already
depends on.

basic-pitch 0.4.0 is installed without its dependencies (`pip install --no-deps basic-pitch==0.4.0`): its
metadata asks for TensorFlow < 2.15.1 on Linux, which nothing here needs. Its package `__init__` probes for
TensorFlow, CoreML and TFLite, logging a warning for each one missing, and prefers TensorFlow when present
(the test environment has it, and importing it takes seconds). So `_import_basic_pitch` hides those three
packages while basic-pitch is imported (unless they are imported already), silences its warnings, and the
ONNX model's path is always given explicitly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from spectrosynth.errors import SpectrosynthError

#: What to run when basic-pitch or mir_eval is missing (basic-pitch must be installed without its deps).
INSTALL = 'pip install "spectrosynth[evaluate]" && pip install --no-deps basic-pitch==0.4.0'
BASIC_PITCH_VERSION = "0.4.0"

# basic_pitch.predict's note settings, kept at basic-pitch's own defaults (its command line's and the
# paper's): an onset needs a peak of the onset posterior above 0.5, a note lasts while the note posterior
# stays above 0.3, notes shorter than 127.7 ms (11 frames of 11.6 ms) are dropped.
ONSET_THRESHOLD = 0.5
FRAME_THRESHOLD = 0.3
MINIMUM_NOTE_MS = 127.70

_HIDDEN = ("tensorflow", "coremltools", "tflite_runtime")  # hidden from basic_pitch's import probes
_OTHER_RUNTIMES = ("TF_PRESENT", "CT_PRESENT", "TFLITE_PRESENT")  # basic_pitch's flags of what it found
_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"  # basic_pitch.predict sets it and leaves it set


def missing_dependency(what: str) -> SpectrosynthError:
    """The one-line error for a missing evaluation dependency, saying exactly what to install."""
    return SpectrosynthError(f"evaluation needs {what}; install it: {INSTALL}")


def _import_basic_pitch():
    """basic_pitch and basic_pitch.inference, imported so that they take onnxruntime and never TensorFlow."""
    # pretty_midi first, through spectrosynth's guard of its FluidSynth binding (which prints to stdout
    # under CI=true, and can fail to load): basic_pitch imports pretty_midi too.
    import spectrosynth.instruments  # noqa: F401

    hidden = [name for name in _HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError: basic_pitch takes it as absent
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import basic_pitch
        import basic_pitch.inference as inference
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in _HIDDEN:  # a basic-pitch that insists on TensorFlow
            raise missing_dependency(f"basic-pitch {BASIC_PITCH_VERSION} ({e})") from e
        what = "basic-pitch" if e.name and e.name.startswith("basic_pitch") else f"{e.name} (for basic-pitch)"
        raise missing_dependency(what) from e
    finally:
        logging.disable(disabled)
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    if not getattr(basic_pitch, "ONNX_PRESENT", True):
        raise missing_dependency("onnxruntime (for basic-pitch's ONNX model)")
    return basic_pitch, inference


def onnx_model_path() -> Path:
    """The ONNX export of basic-pitch's ICASSP 2022 model, inside the installed package."""
    basic_pitch, _ = _import_basic_pitch()
    return Path(basic_pitch.__file__).parent / "saved_models" / "icassp_2022" / "nmp.onnx"


class Transcriber:
    """basic-pitch's model, loaded once; call it on audio to get its notes.

    Thread-safe: onnxruntime sessions may run concurrently, and the temporary files are per call.
    """

    def __init__(self) -> None:
        basic_pitch, self._inference = _import_basic_pitch()
        path = onnx_model_path()
        if not path.is_file():
            raise missing_dependency(f"basic-pitch's ONNX model, which is not at {path}")
        if any(getattr(basic_pitch, flag, False) for flag in _OTHER_RUNTIMES):
            # basic_pitch was imported earlier, elsewhere, where TensorFlow (or CoreML) could be imported:
            # Model() would try to load the ONNX file with those first. Build its ONNX model directly.
            self._model = _onnx_model(self._inference, path)
        else:
            self._model = self._inference.Model(path)  # finds only onnxruntime, as imported above
        self.model_path = path

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """The notes basic-pitch hears in mono float `audio` at `sample_rate` Hz.

        Returns a (N, 3) float64 array of (onset seconds, offset seconds, MIDI pitch), sorted by onset then
        pitch. basic_pitch only reads files, so the audio goes through a temporary 32-bit float WAV (no
        quantisation); basic-pitch resamples it to its 22 050 Hz itself.
        """
        import soundfile as sf

        x = np.asarray(audio, np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected mono audio as a 1-D array of samples, got shape {x.shape}")
        if not len(x):
            return np.zeros((0, 3))
        with tempfile.TemporaryDirectory(prefix="spectrosynth-evaluate-") as folder:
            path = os.path.join(folder, "audio.wav")
            sf.write(path, x, int(sample_rate), subtype="FLOAT")
            tf_level = os.environ.get(_TF_LOG_LEVEL)
            try:
                # predict prints "Predicting MIDI for ..." on stdout, where --json output goes; librosa's
                # audioread warns of deprecated modules, and silence divides 0 by 0 in note creation.
                with (
                    contextlib.redirect_stdout(io.StringIO()),
                    warnings.catch_warnings(),
                    np.errstate(divide="ignore", invalid="ignore"),
                ):
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    _, _, events = self._inference.predict(
                        path,
                        self._model,
                        onset_threshold=ONSET_THRESHOLD,
                        frame_threshold=FRAME_THRESHOLD,
                        minimum_note_length=MINIMUM_NOTE_MS,
                    )
            finally:
                if tf_level is None:
                    os.environ.pop(_TF_LOG_LEVEL, None)
                else:
                    os.environ[_TF_LOG_LEVEL] = tf_level
        notes = np.array([(float(on), float(off), float(pitch)) for on, off, pitch, *_ in events], np.float64)
        notes = notes.reshape(-1, 3)
        return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def _onnx_model(inference, path: Path):
    """basic_pitch's Model of the ONNX file, as Model() makes it when onnxruntime is the only runtime."""
    import onnxruntime

    model = inference.Model.__new__(inference.Model)
    model.model_type = inference.Model.MODEL_TYPES.ONNX
    model.model = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model


_DEFAULT: Transcriber | None = None
_DEFAULT_LOCK = threading.Lock()


def default_transcriber() -> Transcriber:
    """The process's shared Transcriber, loaded on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Transcriber()
        return _DEFAULT


def transcribe(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Notes in `audio` as a (N, 3) array of (onset s, offset s, MIDI pitch), with the shared Transcriber."""
    return default_transcriber()(audio, sample_rate)
