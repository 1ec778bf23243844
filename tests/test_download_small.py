"""`spectrosynth download small` and `--model small` (spectrosynth.small_model), offline: the authors' zip is
served by a local HTTP server on the loopback address (SPECTROSYNTH_SMALL_URL), here holding a tiny random
model written as a t5x run. The download resumes after a dropped connection, refuses a wrong size or
checksum leaving nothing, converts once, and later loads need no server."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spectrosynth import small_model, weights
from spectrosynth.cli import app
from spectrosynth.presets import model_configs
from spectrosynth.testing import random_state_dict, write_vocoder

pytest.importorskip("msgpack")
pytest.importorskip("tensorstore")

from t5x_helpers import assert_converted, flax_tree, gin_for, write_t5x_checkpoint, zip_run  # noqa: E402

WALTZ = Path(__file__).parent / "data" / "midi" / "nottingham" / "waltzes1.mid"
ZIP_NAME = "small_with_context.zip"


class ZipServer:
    """Serves one file at /small_with_context.zip over HTTP/1.0, with Range and If-Range as Google Cloud
    Storage does (ETag, x-goog-hash md5). `cut_at`: the next whole response stops after that many bytes
    (the connection dropped); `fail`: that many requests (after the cut one) get 503; `md5`: the hash it
    announces."""

    def __init__(self, data: bytes):
        self.data, self.etag = data, '"v1"'
        self.cut_at: int | None = None
        self.fail = 0
        self.md5: str | None = base64.b64encode(hashlib.md5(data).digest()).decode()
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append({k: v for k, v in self.headers.items()})
                if self.path != f"/{ZIP_NAME}":
                    self.send_error(404, "Not Found")
                    return
                if server.fail > 0 and server.cut_at is None:  # after the cut response, if any
                    server.fail -= 1
                    self.send_error(503, "Service Unavailable")
                    return
                data, start = server.data, 0
                wanted = self.headers.get("Range")
                if wanted and self.headers.get("If-Range") in (None, server.etag):
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", server.etag)
                if server.md5:
                    self.send_header("x-goog-hash", f"crc32c=AAAAAA==, md5={server.md5}")
                self.end_headers()
                body = data[start:]
                if server.cut_at is not None and start == 0:
                    body, server.cut_at = body[: server.cut_at], None
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{ZIP_NAME}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def ranges(self) -> list[str | None]:
        return [r.get("Range") for r in self.requests]


@pytest.fixture(scope="module")
def small_zip(tmp_path_factory):
    """A tiny random model as the authors' small_with_context.zip (a t5x run: config.gin, checkpoint_N/)."""
    root = tmp_path_factory.mktemp("small-zip")
    configs = model_configs("tiny")
    states = {c: random_state_dict(c, configs[c], seed=7) for c in weights.COMPONENTS}
    tree = flax_tree(states, {c: configs[c]["num_layers"] for c in weights.COMPONENTS})
    write_t5x_checkpoint(root / "small_with_context", tree, gin=gin_for(configs, "small_with_context"))
    archive = zip_run(root / "small_with_context", root / ZIP_NAME)
    return {"data": archive.read_bytes(), "configs": configs, "states": states}


@pytest.fixture
def server(small_zip):
    s = ZipServer(small_zip["data"])
    yield s
    s.stop()


@pytest.fixture
def env(tmp_path, server):
    """The environment of a spectrosynth process: its own caches, the hub offline, the zip served here."""
    values = {
        "SPECTROSYNTH_SMALL_URL": server.url,
        "SPECTROSYNTH_CACHE": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    return {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")}, **values}


def spectrosynth(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "spectrosynth", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def cache_of(env: dict) -> Path:
    return Path(env["SPECTROSYNTH_CACHE"]) / "models"


def kept(models: Path) -> list[str]:
    """What the cache holds, besides the lock file of concurrent downloads."""
    return (
        sorted(p.name for p in models.iterdir() if p.name != ".small_with_context.lock")
        if models.exists()
        else []
    )


def fake_published_vocoder(env: dict) -> Path:
    """The Hugging Face cache holding google/music-spectrogram-diffusion's melgan/model.onnx (only)."""
    repo = Path(env["HF_HOME"]) / "hub" / "models--google--music-spectrogram-diffusion"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return write_vocoder(repo / "snapshots" / commit / weights.MELGAN, seed=3)


def test_download_small_resumes_after_a_dropped_connection_and_converts_once(small_zip, server, env):
    server.cut_at = len(small_zip["data"]) // 2
    result = spectrosynth("download", "small", env=env)
    assert result.returncode == 0, result.stderr
    models = cache_of(env)
    assert result.stdout.strip() == str(models / "small_with_context")
    # the first response was cut mid-way, and the second asked for the rest only
    assert server.ranges == [None, f"bytes={len(small_zip['data']) // 2}-"]
    assert server.requests[1]["If-Range"] == '"v1"'
    assert (
        "the connection dropped at" in result.stderr and "resuming small_with_context.zip at" in result.stderr
    )
    assert (models / ZIP_NAME).read_bytes() == small_zip["data"]
    assert kept(models) == ["small_with_context", ZIP_NAME]  # no .part left
    assert_converted(models / "small_with_context", small_zip["configs"], small_zip["states"])
    assert "is complete and checked" in result.stderr and "has no vocoder" in result.stderr

    # later: no server needed, nothing fetched again
    server.stop()
    again = spectrosynth("download", "small", env=env)
    assert again.returncode == 0, again.stderr
    assert len(server.requests) == 2
    wav = Path(env["SPECTROSYNTH_CACHE"]).parent / "w.wav"
    quick = ["--steps", "2", "--duration", "2", "--device", "cpu"]
    options = ["--model", "small", "--vocoder", "griffin-lim", *quick]
    render = spectrosynth("render", str(WALTZ), str(wav), *options, env=env)
    assert render.returncode == 0, render.stderr
    assert "loading small on cpu" in render.stderr and wav.is_file()
    # --model small wants a vocoder by default: it has none, and says what to do in one line
    no_vocoder = spectrosynth("render", str(WALTZ), str(wav), "--model", "small", "--force", env=env)
    assert no_vocoder.returncode == 1 and no_vocoder.stderr.count("\n") == 1
    assert (
        "the small model has no vocoder" in no_vocoder.stderr and "--vocoder griffin-lim" in no_vocoder.stderr
    )

    doctor = json.loads(spectrosynth("doctor", "--json", env=env).stdout)["small_model"]
    assert doctor["zip_cached"] and doctor["converted"] and doctor["vocoder"] is False
    assert doctor["url"] == env["SPECTROSYNTH_SMALL_URL"]


def test_the_published_vocoder_in_the_hugging_face_cache_is_taken(small_zip, server, env):
    assert spectrosynth("download", "small", "--quiet", env=env).returncode == 0
    onnx = fake_published_vocoder(env)  # the published model downloaded after the small one
    server.stop()
    wav = Path(env["SPECTROSYNTH_CACHE"]).parent / "w.wav"
    quick = ["--steps", "2", "--duration", "2", "--device", "cpu"]
    render = spectrosynth("render", str(WALTZ), str(wav), "--model", "small", *quick, env=env)
    assert render.returncode == 0, render.stderr
    model = cache_of(env) / "small_with_context"
    assert (model / weights.MELGAN).read_bytes() == onnx.read_bytes()
    assert weights.verify_model(model) > 0


def test_a_download_with_the_vocoder_cached_has_it_from_the_start(small_zip, server, env):
    fake_published_vocoder(env)
    result = spectrosynth("download", "--model", "small", env=env)
    assert result.returncode == 0, result.stderr
    assert "has no vocoder" not in result.stderr
    assert (cache_of(env) / "small_with_context" / weights.MELGAN).is_file()


def test_a_wrong_size_is_refused_and_nothing_is_kept(small_zip, server, env, monkeypatch):
    monkeypatch.setattr(small_model, "EXPECTED_SIZE", len(small_zip["data"]) + 1)
    result = CliRunner().invoke(app, ["download", "small"], env=env)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("spectrosynth: error: ")]
    assert len(errors) == 1 and errors == lines[-1:] and "Traceback" not in result.stderr
    assert f"is {len(small_zip['data'])} bytes, but small_with_context.zip is" in errors[0]
    assert "nothing was kept" in errors[0]
    assert kept(cache_of(env)) == []


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(server, env):
    server.md5 = base64.b64encode(hashlib.md5(b"another file").digest()).decode()
    result = spectrosynth("download", "small", "--quiet", env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "does not match the MD5 the server gives" in result.stderr and "nothing was kept" in result.stderr
    assert kept(cache_of(env)) == []


def test_a_download_that_keeps_failing_keeps_its_part_and_the_next_one_resumes(small_zip, server, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    monkeypatch.setattr(small_model, "RETRIES", 1)
    monkeypatch.setattr(small_model, "BACKOFF_SECONDS", 0.01)
    data = small_zip["data"]
    dest = tmp_path / ZIP_NAME
    server.cut_at, server.fail = len(data) // 3, 5
    events = []
    with pytest.raises(small_model.DownloadError, match="the next run resumes there") as e:
        small_model.download(server.url, dest, callback=events.append)
    assert "\n" not in str(e.value) and "HTTP 503" in str(e.value)
    part = tmp_path / f"{ZIP_NAME}.part"
    assert part.read_bytes() == data[: len(data) // 3] and not dest.exists()
    assert [p.event for p in events].count("retry") == 1
    server.fail = 0
    small_model.download(server.url, dest)
    assert dest.read_bytes() == data and not part.exists()
    assert server.ranges[-1] == f"bytes={len(data) // 3}-"


def test_a_file_changed_on_the_server_is_downloaded_again_from_the_start(small_zip, server, tmp_path):
    dest = tmp_path / ZIP_NAME
    server.cut_at = 1000
    server.fail = 10  # the first response is cut, then the server is down: the part stays
    with pytest.raises(small_model.DownloadError):
        small_model.download(server.url, dest)
    assert (tmp_path / f"{ZIP_NAME}.part").stat().st_size == 1000
    server.fail, server.etag = 0, '"v2"'
    server.data = small_zip["data"][::-1]  # another file now: If-Range fails, the whole file comes
    server.md5 = base64.b64encode(hashlib.md5(server.data).digest()).decode()
    small_model.download(server.url, dest)
    assert dest.read_bytes() == server.data


def test_the_python_api_takes_small(small_zip, server, env, monkeypatch):
    assert spectrosynth("download", "small", "--quiet", env=env).returncode == 0
    server.stop()
    monkeypatch.setenv("SPECTROSYNTH_CACHE", env["SPECTROSYNTH_CACHE"])
    from spectrosynth.pipeline import Synthesizer

    synth = Synthesizer.from_pretrained("small", device="cpu", dtype="float32", vocoder="griffin-lim",
                                        progress=False)  # fmt: skip
    assert synth.decoder is not None
    assert weights.resolve_model("small", vocoder=False) == cache_of(env) / "small_with_context"


@pytest.mark.parametrize(
    "case,says",
    [("missing", "answered HTTP 404"), ("cache off", "SPECTROSYNTH_CACHE is off"),
     ("twice", "the model is given twice")],
)  # fmt: skip
def test_download_small_failures_are_one_line(server, env, case, says):
    args = ["download", "small", "--quiet"]
    if case == "missing":
        env = {**env, "SPECTROSYNTH_SMALL_URL": server.url.replace(ZIP_NAME, "nothing.zip")}
    elif case == "cache off":
        env = {**env, "SPECTROSYNTH_CACHE": "off"}
    else:
        args += ["--model", "base"]
    result = spectrosynth(*args, env=env)
    assert result.returncode in (1, 2) and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    if case == "missing":
        assert kept(cache_of(env)) == []


def test_a_damaged_zip_in_the_cache_is_removed_so_the_next_run_fetches_it(small_zip, server, env):
    models = cache_of(env)
    models.mkdir(parents=True)
    (models / ZIP_NAME).write_bytes(
        small_zip["data"][: len(small_zip["data"]) // 2]
    )  # cut, yet complete-looking
    result = spectrosynth("download", "small", "--quiet", env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "not a complete zip archive" in result.stderr and "removed from the cache" in result.stderr
    assert kept(models) == []
    result = spectrosynth("download", "small", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert (models / ZIP_NAME).read_bytes() == small_zip["data"]
    shutil.rmtree(models)
