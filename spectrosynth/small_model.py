"""The authors' small model, small_with_context: `--model small`.

The authors published it only as a t5x checkpoint, zipped (magenta/music-spectrogram-diffusion's README):

    https://storage.googleapis.com/music-synthesis-with-spectrogram-diffusion/checkpoints/small_with_context.zip

`resolve()` downloads the zip once into spectrosynth's cache ($SPECTROSYNTH_CACHE/models, default
~/.cache/spectrosynth/models; `SPECTROSYNTH_SMALL_URL` names another place to fetch it from, a mirror or a
test server), converts it once into the published layout (spectrosynth.t5x) beside it, and keeps both:

    models/small_with_context.zip          the authors' file, as downloaded
    models/small_with_context/             the converted model, in the published layout
    models/small_with_context.zip.part     while downloading: what has arrived (and .part.json: its URL,
                                           size and validator), so that a later run resumes it

Later loads use the converted folder and need no network. The download resumes with HTTP Range requests
after a dropped connection (retrying a few times, then keeping the .part for the next run), and is checked
against the server's Content-Length and, where the server sends one (Google Cloud Storage's x-goog-hash), the
MD5 of the whole file. No public source records the zip's size or a checksum (the README links it bare), so
there is no size recorded here (`EXPECTED_SIZE`); a mirror is checked the same way.

The zip has no vocoder: the converted model gets melgan/model.onnx of google/music-spectrogram-diffusion,
from the Hugging Face cache if it is there, else fetched alone from the hub (60.5 MB, not when
HF_HUB_OFFLINE is set); without it the model renders with `--vocoder griffin-lim`, and a later load copies
the vocoder in once the published model is in the cache.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spectrosynth import weights
from spectrosynth.errors import HubError, ModelLayoutError, SpectrosynthError

NAME = "small_with_context"
SMALL_URL = (
    "https://storage.googleapis.com/music-synthesis-with-spectrogram-diffusion/checkpoints/"
    "small_with_context.zip"
)
URL_VARIABLE = "SPECTROSYNTH_SMALL_URL"
#: The zip's size in bytes if a public source recorded it. None does (see the module docstring), so the
#: download is checked against the server's Content-Length (and MD5, where sent) only.
EXPECTED_SIZE: int | None = None
#: Tries after a dropped connection without progress, and the first wait between them (doubling).
RETRIES = 5
BACKOFF_SECONDS = 1.0
TIMEOUT_SECONDS = 60.0
_CHUNK = 1 << 20


def url() -> str:
    """Where the zip is fetched from: $SPECTROSYNTH_SMALL_URL, else the authors' storage."""
    return os.environ.get(URL_VARIABLE, "").strip() or SMALL_URL


def models_dir() -> Path:
    """spectrosynth's folder of downloaded models ($SPECTROSYNTH_CACHE/models)."""
    from spectrosynth.converted import cache_home

    home = cache_home()
    if home is None:
        raise SpectrosynthError(
            "SPECTROSYNTH_CACHE is off, so the small model has nowhere to be kept; set SPECTROSYNTH_CACHE to "
            "a folder (or unset it), or convert the zip with `spectrosynth convert` and pass that folder"
        )
    return home / "models"


def zip_path() -> Path:
    return models_dir() / f"{NAME}.zip"


def folder() -> Path:
    """The converted model's folder (complete once it exists: it is written under another name first)."""
    return models_dir() / NAME


# --------------------------------------------------------------------------------------------------------
# Downloading


@dataclass(frozen=True)
class DownloadProgress:
    """What a download reports: `event` is "start" (a response: `resumed_from` > 0 when resuming), "bytes",
    "retry" (`message`: why, and the wait) or "done"."""

    event: str
    name: str
    done: int
    total: int | None
    resumed_from: int = 0
    message: str = ""


class DownloadError(HubError):
    """A download that failed or that was refused (a wrong size or checksum)."""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _md5_from(header: str | None) -> str | None:
    """The MD5 in x-goog-hash headers ("crc32c=..., md5=<base64>", or one header per hash, joined), as
    hex."""
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "md5" and value:
            try:
                return base64.b64decode(value).hex()
            except (binascii.Error, ValueError):
                return None
    return None


def _content_range(header: str | None) -> tuple[int, int | None] | None:
    match = re.fullmatch(r"bytes\s+(\d+)-\d+/(\d+|\*)", (header or "").strip())
    if not match:
        return None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(_CHUNK * 8):
            digest.update(block)
    return digest.hexdigest()


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def download(
    source: str,
    dest: Path,
    expected_size: int | None = None,
    callback: Callable[[DownloadProgress], None] | None = None,
) -> Path:
    """Fetch `source` (http or https) into `dest`, resumably: the bytes go to DEST.part (its URL, size and
    validator to DEST.part.json), a dropped connection is resumed with a Range request (up to RETRIES tries
    without progress, waiting BACKOFF_SECONDS doubling), and DEST.part is renamed to `dest` once complete
    and checked: its size against the server's Content-Length and `expected_size`, its MD5 against the
    server's x-goog-hash when sent. A failed download keeps DEST.part for the next call to resume; a refused
    one (wrong size or checksum) keeps nothing."""
    tell = callback or (lambda p: None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    meta: dict = {}
    if part.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
    if meta.get("url") != source or not isinstance(meta.get("size"), int | type(None)):
        meta = {}
        _discard(part, meta_path)
    offset = part.stat().st_size if meta else 0
    failures = 0
    while True:
        headers = {"User-Agent": "spectrosynth", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if meta.get("validator"):
                headers["If-Range"] = meta["validator"]
        received = 0
        try:
            request = urllib.request.Request(source, headers=headers)
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                span = _content_range(response.headers.get("Content-Range"))
                span = span if response.status == 206 else None
                if offset and span is not None and span[0] == offset and span[1] == meta.get("size"):
                    tell(DownloadProgress("start", dest.name, offset, meta.get("size"), resumed_from=offset))
                elif response.status == 206:  # not the rest of the file begun: it changed; start over
                    _discard(part, meta_path)
                    meta, offset = {}, 0
                    raise http.client.HTTPException("the file changed on the server, starting over")
                else:  # a whole response: the first, or the server ignored the range (or the file changed)
                    if response.status != 200:
                        raise DownloadError(
                            f"{source} answered a download of {dest.name} with HTTP {response.status}; try "
                            "again later"
                        )
                    length = response.headers.get("Content-Length")
                    size = int(length) if length and length.isdigit() else None
                    if expected_size is not None and size is not None and size != expected_size:
                        _discard(part, meta_path)
                        raise DownloadError(
                            f"{source} is {size} bytes, but {dest.name} is {expected_size} bytes; it is not "
                            f"the expected file (check {URL_VARIABLE}), nothing was kept"
                        )
                    validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
                    md5 = _md5_from(", ".join(response.headers.get_all("x-goog-hash") or []))
                    meta = {"url": source, "size": size, "validator": validator, "md5": md5}
                    meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
                    offset = 0
                    part.write_bytes(b"")
                    tell(DownloadProgress("start", dest.name, 0, size))
                with part.open("ab") as f:
                    while block := response.read(_CHUNK):
                        f.write(block)
                        offset += len(block)
                        received += len(block)
                        tell(DownloadProgress("bytes", dest.name, offset, meta["size"]))
                        if meta["size"] is not None and offset > meta["size"]:
                            break
            size = meta["size"]
            if size is not None and offset < size:
                raise http.client.IncompleteRead(b"", size - offset)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:  # the range is past the end: the file changed; start over
                _discard(part, meta_path)
                meta, offset = {}, 0
                continue
            if e.code < 500 and e.code not in (408, 429):
                raise DownloadError(
                    f"cannot download {dest.name}: {source} answered HTTP {e.code} ({e.reason}); check the "
                    f"address ({URL_VARIABLE} sets it)"
                ) from None
            reason = f"HTTP {e.code}"
        except (http.client.HTTPException, OSError) as e:  # URLError, timeouts, resets are OSErrors
            if isinstance(e, OSError) and e.filename and Path(e.filename).parent == dest.parent:
                raise  # writing the file failed (a full disk): not the connection
            reason = " ".join(str(getattr(e, "reason", None) or e).split()) or type(e).__name__
        else:
            break
        failures = 1 if received else failures + 1
        if failures > RETRIES:
            kept = f"; {_mb(offset)} of it is kept in {part} and the next run resumes there" if offset else ""
            raise DownloadError(
                f"lost the connection to {source} while downloading {dest.name} ({reason}) and {RETRIES} "
                f"tries to resume failed{kept}; run the command again"
            )
        wait = BACKOFF_SECONDS * 2 ** (failures - 1)
        message = f"{reason}; retrying in {wait:g} s"
        tell(DownloadProgress("retry", dest.name, offset, meta.get("size"), message=message))
        time.sleep(wait)

    size = meta.get("size")
    actual = part.stat().st_size
    if (size is not None and actual != size) or (expected_size is not None and actual != expected_size):
        _discard(part, meta_path)
        want = expected_size if expected_size is not None else size
        raise DownloadError(
            f"the download of {dest.name} from {source} came to {actual} bytes, not the {want} announced; it "
            "was refused and nothing was kept: run the command again"
        )
    if meta.get("md5") and _file_md5(part) != meta["md5"]:
        _discard(part, meta_path)
        raise DownloadError(
            f"the download of {dest.name} from {source} does not match the MD5 the server gives; it was "
            "refused and nothing was kept: run the command again"
        )
    with part.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    _discard(meta_path)
    tell(DownloadProgress("done", dest.name, actual, actual))
    return dest


# --------------------------------------------------------------------------------------------------------
# The converted model


def _published_vocoder(fetch: bool, note: Callable[[str], None]) -> Path | None:
    """melgan/model.onnx of the published model: from the Hugging Face cache, else (`fetch`, not offline)
    downloaded alone from the hub; None when neither works."""
    from spectrosynth.t5x import cached_published_vocoder

    cached = cached_published_vocoder()
    if cached is not None or not fetch or weights._hub_offline():
        return cached
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(weights.DEFAULT_MODEL, weights.MELGAN))
    except Exception as e:  # noqa: BLE001 - no hub: the model renders with griffin-lim until it has one
        note(f"could not fetch the vocoder from {weights.DEFAULT_MODEL} ({weights._one_line(e)})")
        return None


def _add_vocoder(model: Path, source: Path) -> None:
    """Copy the vocoder into a converted folder, atomically (a hidden name, then renamed)."""
    target = model / weights.MELGAN
    target.parent.mkdir(exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` while the block runs (where fcntl exists): processes that load the small
    model at once (a batch's workers) download and convert it once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def no_vocoder_message() -> str:
    return (
        f"the small model has no vocoder: its zip has none, and {weights.MELGAN} of {weights.DEFAULT_MODEL} "
        "is not in the Hugging Face cache; render with --vocoder griffin-lim (much lower quality), or run "
        "`spectrosynth download` (the published model, with its vocoder): the small model then takes it"
    )


def is_converted() -> bool:
    """Whether the converted model is in the cache (without the vocoder perhaps)."""
    try:
        return not weights.missing_files(folder(), vocoder=False)
    except SpectrosynthError:
        return False


def resolve(
    progress: bool = True,
    force: bool = False,
    vocoder: bool = True,
    note: Callable[[str], None] | None = None,
) -> Path:
    """The converted small model's folder: downloaded and converted on first use (or again with `force`),
    later straight from the cache. vocoder=False: the folder need not have melgan/model.onnx."""
    from spectrosynth import t5x
    from spectrosynth.progress import DownloadProgressDisplay

    def say(message: str) -> None:
        if note is not None:
            note(message)
        elif progress:
            print(f"spectrosynth: {message}", file=sys.stderr, flush=True)

    model = folder()
    if force or not is_converted():
        t5x.require_msgpack()  # before downloading what could not be read
        with _lock(models_dir() / f".{NAME}.lock"):  # one process downloads; the others wait, then use it
            if force or not is_converted():
                archive = zip_path()
                if force or not archive.is_file():
                    with DownloadProgressDisplay(quiet=not progress) as display:
                        download(url(), archive, EXPECTED_SIZE, display)
                source = _published_vocoder(fetch=True, note=say)
                try:
                    t5x.convert(archive, model, vocoder=source, force=True, note=say)
                except t5x.T5xError as e:
                    archive.unlink(missing_ok=True)  # damaged: the next run downloads it again
                    raise SpectrosynthError(f"{e} (the zip was removed from the cache: run again)") from None
    elif not (model / weights.MELGAN).is_file():
        source = _published_vocoder(fetch=False, note=say)
        if source is not None:
            _add_vocoder(model, source)
    if vocoder and not (model / weights.MELGAN).is_file():
        raise ModelLayoutError(no_vocoder_message())
    return model
