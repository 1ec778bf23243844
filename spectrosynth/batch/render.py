"""Rendering jobs with continuous batching: songs share each pass through the model, and a finished song's
place goes at once to the next one.

With a batch of B, the model samples one segment of each of B songs at a time: song i's next segment, with
its own previous segment as context and its own noise generator. When a song's last segment is done its
file is published and the next job takes its slot, starting at its first segment beside songs in the
middle of theirs. No pass waits for the longest song of a fixed group, so the batch stays full until the
queue runs out. Each song gets what it would alone, up to floating-point rounding.

With stems or a stereo mix (spectrosynth.stems) a song is several rows, its tracks (and the whole song
for a mono mix), which always go through the model together, so a song takes as many places in the batch
as it has parts.

Files are written progressively and atomically (spectrosynth.stems.PartsOutput). A problem with one file
(unreadable MIDI, an option it does not fit, an output that cannot be written) is that job's failed
result; anything else (the model, the device) stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from spectrosynth.batch.jobs import Job, RenderSettings, Result
from spectrosynth.constants import DEFAULT_VOCODER
from spectrosynth.errors import MidiError, OutputError, RemapError, SpectrosynthError
from spectrosynth.midi import read_midi
from spectrosynth.pipeline import FilmCache, SegmentRow, Synthesizer
from spectrosynth.stems import PartsOutput, plan_parts
from spectrosynth.tokens import PreparedSong

#: Errors that concern one file: the batch goes on.
PER_FILE_ERRORS = (MidiError, OutputError, RemapError)


@dataclass
class _Slot:
    """A song in the batch: one row, or one per part with stems or a stereo mix."""

    job: Job
    songs: list[PreparedSong]  # the rows, all with as many segments
    output: PartsOutput
    generators: list[torch.Generator]
    began: float
    notes: list[str]
    done: int = 0
    contexts: list[np.ndarray | None] = field(default_factory=list)

    @property
    def segments(self) -> int:
        return len(self.songs[0].segments)


@dataclass
class BatchStats:
    """Work done by `render_jobs`, for measuring how full its batches were."""

    passes: int = 0  # batched segment passes through the model
    rows: int = 0  # segments sampled (a pass of B songs samples B)
    slots: int = 0  # rows the passes could have held: passes x batch size
    per_pass: list[int] = field(default_factory=list)


def render_jobs(
    jobs: Iterable[Job],
    synth: Synthesizer,
    settings: RenderSettings,
    *,
    batch_size: int = 1,
    force: bool = False,
    worker: str = "",
    on_segment: Callable[[Job, int, int], None] | None = None,
    stats: BatchStats | None = None,
) -> Iterator[Result]:
    """Render `jobs` with up to `batch_size` songs per pass; yield each job's Result as it finishes.

    on_segment(job, done, segments): after each of a song's segments. A failed job yields a failed Result;
    an error that is not about one file is raised, after every unfinished output has been removed.
    """
    loaded = getattr(synth.vocoder, "name", DEFAULT_VOCODER)
    if loaded != settings.vocoder:  # the files would not be what the manifest says they are
        raise SpectrosynthError(
            f"the batch settings ask for the {settings.vocoder} vocoder, but the model was loaded with the "
            f"{loaded} one; load it with Synthesizer.from_pretrained(..., vocoder={settings.vocoder!r})"
        )
    queue = iter(jobs)
    remap = settings.remap()
    films = FilmCache(synth.decoder, synth.device)  # the same step times for every pass: computed once
    slots: list[_Slot] = []

    def refill() -> Iterator[Result]:
        while sum(len(s.songs) for s in slots) < batch_size:
            job = next(queue, None)
            if job is None:
                return
            began = time.monotonic()
            try:
                score = read_midi(job.source, name=job.rel)
                job.target.parent.mkdir(parents=True, exist_ok=True)
                mel = None if job.mel_target is None else str(job.mel_target)
                parts = plan_parts(score, remap, settings.start, settings.duration, settings.output, job.rel,
                                   stems=settings.stems)  # fmt: skip
                songs, notes = [p.song for p in parts.parts], parts.notices
                # The batch owns each song's stem folder: a re-render replaces what a stopped one left.
                output = PartsOutput(parts, synth.vocoder, str(job.target), settings.output, force,
                                     job.stems_target, mel, stems_force=True)  # fmt: skip
            except (SpectrosynthError, OSError) as e:  # anything about reading or preparing this file
                yield _failed(job, e, began, worker)
                continue
            generators = [torch.Generator().manual_seed(settings.seed) for _ in songs]
            slots.append(_Slot(job, songs, output, generators, began, notes, contexts=[None] * len(songs)))

    try:
        yield from refill()
        while slots:
            rows = [
                SegmentRow(song.segments[s.done].tokens, context, generator)
                for s in slots
                for song, context, generator in zip(s.songs, s.contexts, s.generators, strict=True)
            ]
            mels = synth.sample_segments(rows, sampler=settings.sampler, steps=settings.steps,
                                         guidance=settings.guidance, films=films,
                                         guidance_interval=settings.guidance_interval)  # fmt: skip
            if stats is not None:
                stats.passes += 1
                stats.rows += len(rows)
                stats.slots += batch_size
                stats.per_pass.append(len(rows))
            per_slot, at = [], 0
            for slot in slots:
                per_slot.append(mels[at : at + len(slot.songs)])
                at += len(slot.songs)
            finished = [result for slot, mine in zip(slots, per_slot, strict=True)
                        if (result := _add(slot, mine, worker, on_segment)) is not None]  # fmt: skip
            done = {id(r.job) for r in finished}
            slots[:] = [s for s in slots if id(s.job) not in done]
            yield from finished
            yield from refill()
    except BaseException:  # an error about the model or the run, Ctrl-C, or the consumer stopping
        for slot in slots:
            slot.output.abort()
        raise


def _add(slot: _Slot, mels: list[np.ndarray], worker: str, on_segment) -> Result | None:
    """Give a song its next segment (one per row); its Result once it is finished (or has failed)."""
    slot.contexts, slot.done = list(mels), slot.done + 1
    try:
        slot.output.add(mels)
        if on_segment is not None:
            on_segment(slot.job, slot.done, slot.segments)
        if slot.done < slot.segments:
            return None
        summary = slot.output.finish()
    except (*PER_FILE_ERRORS, OSError) as e:
        slot.output.abort()
        return _failed(slot.job, e, slot.began, worker)
    seconds = time.monotonic() - slot.began
    return Result(slot.job, "ok", audio_seconds=summary.mix.duration, render_seconds=seconds,
                  segments=slot.segments, worker=worker, notes=slot.notes,
                  loudness=summary.mix.loudness)  # fmt: skip


def _failed(job: Job, e: BaseException, began: float, worker: str) -> Result:
    message = str(e)
    if isinstance(e, OSError) and e.filename:
        message = f"{e.filename}: {e.strerror or e}"
    if job.rel not in message:
        message = f"{job.rel}: {message}"
    return Result(job, "failed", message, type(e).__name__, render_seconds=time.monotonic() - began,
                  worker=worker)  # fmt: skip
