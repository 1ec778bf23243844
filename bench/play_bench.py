"""Time to first sound with `spectrosynth play` (docs/performance.md, "Time to first sound").

    .venv/bin/python bench/play_bench.py --checkpoint /tmp/spectrosynth-base-random-soundstream

Each run is `spectrosynth play` in its own process on the first --seconds (30) of a real multi-track MIDI
file (example_complex.mid: 18 tracks with drums) with a random checkpoint in the published base sizes and
SoundStream's decoder at the published vocoder's size (`python -m spectrosynth.testing DIR --size base
--vocoder soundstream`), timed from the process's start. No sound card: the child process replaces
`spectrosynth.playback.open_stream` with a fake output stream that takes the audio at real time (blocks of
1024 frames on a clock), as a device would, so what it records is what a listener would have heard:

- `first_sound_s`: from the process's start to the first non-silent sample played (the start-up, the model
  load, the rendering until the schedule lets playback start);
- `model_loaded_s`, `first_audio_s`, `playback_start_s`, `render_end_s`, `playback_end_s`: the same clock;
- `earliest_safe_start_s`: the earliest start that would not have run dry, known afterwards from when each
  piece of audio arrived; `playback_start_s` minus it is what the scheduler's margin cost;
- `dropouts`, `silence_s`: whether playback ran dry (it must not).

The converted-weights cache (spectrosynth.converted) is warmed first, so the runs show a warm start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

SONG = ROOT / "tests/data/midi/note-seq/example_complex.mid"

RUNS = [
    ("default (--dtype auto)", []),
    ("a draft: unipc 10", ["--steps", "10"]),
]


# -- the child: `spectrosynth play` with a real-time fake output stream -------------------------------------


def child(record: Path, argv: list[str]) -> None:
    import threading

    import numpy as np

    from spectrosynth import playback

    events: dict[str, float] = {}
    arrivals: list[tuple[float, float]] = []  # (time, song time where the audio starts)
    block = 1024

    class RealTimeStream:
        """Takes `block` frames every block / rate seconds, on an absolute clock, like a sound card."""

        def __init__(self, samplerate, channels, device, fill, finished, latency):
            self.rate, self.channels, self.fill, self.finished = samplerate, channels, fill, finished
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)

        def start(self):
            events["playback_start"] = time.time()
            self._thread.start()

        def _run(self):
            began, n = time.monotonic(), 0
            while not self._stop.is_set():
                out = np.zeros((block, self.channels), np.float32)
                more = self.fill(out)
                if "first_sound" not in events and out.any():
                    events["first_sound"] = time.time()
                if not more:
                    break
                n += 1
                time.sleep(max(0.0, began + n * block / self.rate - time.monotonic()))
            events["playback_end"] = time.time()
            self.finished()

        def abort(self):
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join()

        def close(self):
            pass

    fake_sd = type("FakeSoundDevice", (), {"check_output_settings": staticmethod(lambda **kw: None),
                                           "PortAudioError": RuntimeError})  # fmt: skip
    playback.load_sounddevice = lambda: fake_sd
    playback.output_devices = lambda: [playback.OutputDevice(0, "bench", "fake, real time", 2, 48000.0, True)]
    playback.open_stream = RealTimeStream

    watch, feed, end = playback.Player.watch, playback.Player.feed, playback.Player.end
    players = []

    def watch_(self, progress=None):
        events["model_loaded"] = time.time()  # the render loop starts
        players.append(self)
        return watch(self, progress)

    def feed_(self, samples):
        if len(samples):
            events.setdefault("first_audio", time.time())
            arrivals.append((time.time(), self.fed / self.samplerate))
        feed(self, samples)

    def end_(self):
        events["render_end"] = time.time()
        end(self)

    playback.Player.watch, playback.Player.feed, playback.Player.end = watch_, feed_, end_
    from spectrosynth.cli import app

    code = 0
    try:
        app(["play", *argv], standalone_mode=False)
    except SystemExit as e:
        code = e.code or 0
    [player] = players
    record.write_text(json.dumps({
        "code": code, "events": events, "arrivals": arrivals, "dropouts": player.dropouts,
        "silence_s": sum(frames for _, frames in player.gaps) / player.samplerate,
        "audio_s": player.fed / player.samplerate, "rendered_s": player.schedule.rendered_total,
    }))  # fmt: skip


# -- the parent ----------------------------------------------------------------------------------------------


def run(checkpoint: Path, options: list[str], seconds: float, cache: Path) -> dict:
    env = {**os.environ, "SPECTROSYNTH_CACHE": str(cache)}
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.json"
        command = [sys.executable, __file__, "--child", str(record), "--", str(SONG), "--model",
                   str(checkpoint), "--device", "cpu", "--duration", f"{seconds:g}", "--no-cache",
                   *options]  # fmt: skip
        began = time.time()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0 or not record.exists():
            raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")
        data = json.loads(record.read_text())
    events = {f"{name}_s": round(t - began, 2) for name, t in data["events"].items()}
    earliest = max(t - x for t, x in data["arrivals"]) - began
    loading = next((line for line in result.stderr.splitlines() if "loading" in line), "")
    starting = next((line for line in result.stderr.splitlines() if "playing on" in line), "")
    return {
        **dict(sorted(events.items(), key=lambda kv: kv[1])),
        "earliest_safe_start_s": round(earliest, 2),
        "margin_cost_s": round(events["playback_start_s"] - earliest, 2),
        "dropouts": data["dropouts"],
        "silence_s": data["silence_s"],
        "audio_s": round(data["audio_s"], 2),
        "rendered_s": round(data["rendered_s"], 2),  # whole segments
        "render_x_real_time": round(
            data["rendered_s"] / (events["render_end_s"] - events["model_loaded_s"]), 3
        ),
        "stderr_loading": loading.strip(),
        "stderr_playing": starting.strip(),
    }


def main() -> None:
    if "--child" in sys.argv:
        at = sys.argv.index("--child")
        rest = sys.argv[at + 2 :]
        child(Path(sys.argv[at + 1]), rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path(tempfile.gettempdir()) / "spectrosynth-base-random-soundstream",
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/play_bench.json")
    parser.add_argument("--note", default="", help="a note kept with the results (the machine's state)")
    args = parser.parse_args()
    if not (args.checkpoint / "model_index.json").exists():
        from spectrosynth.testing import write_checkpoint

        write_checkpoint(args.checkpoint, "base", weights_format="safetensors", vocoder="soundstream")
    import torch
    from train_bench import cpu_flags

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        warm = [sys.executable, "-m", "spectrosynth", "render", str(SONG), str(Path(tmp) / "warm.wav"),
                "--model", str(args.checkpoint), "--device", "cpu", "--duration", "1", "-q"]  # fmt: skip
        subprocess.run(warm, env={**os.environ, "SPECTROSYNTH_CACHE": str(cache)}, check=True)
        for label, options in RUNS:
            r = {"label": label, "options": options, **run(args.checkpoint, options, args.seconds, cache)}
            results.append(r)
            print(f"{label:24s} first sound {r['first_sound_s']:6.1f} s (model loaded "
                  f"{r['model_loaded_s']:.1f} s, earliest safe start {r['earliest_safe_start_s']:.1f} s), "
                  f"render {r['render_x_real_time']:.2f}x real time, {r['dropouts']} dropouts",
                  flush=True)  # fmt: skip
    summary = {
        "cpu": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "song": SONG.name,
        "seconds": args.seconds,
        "checkpoint": "random, published base sizes, SoundStream vocoder at the published size",
        "output": "fake stream taking the audio at real time (no sound card)",
        "note": args.note,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
