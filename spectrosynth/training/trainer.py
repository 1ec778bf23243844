"""`spectrosynth train`: the training loop, on one device or many (torchrun).

    from spectrosynth.training import TrainOptions, train
    train(TrainOptions(data_dir="data", out_dir="runs/piano", init="google/music-spectrogram-diffusion",
                       mode="decoder", max_steps=2000))

One optimizer step takes `batch_size` examples: split over the processes (torchrun: DDP, nccl on GPUs, gloo
on CPUs) and `grad_accum` micro-batches each. Example g is drawn from the run's seed and g alone
(spectrosynth.training.examples), and every dropout mask from the seed, the step, the process and the
micro-batch, so 1 process and N give the same run (up to the order of floating-point sums), and a resumed
run is the uninterrupted one exactly. Only the first process (rank 0) writes logs, checkpoints and the
model; the others train their share.

OUT_DIR holds run.json (the run's options, which --resume reuses), metrics.csv, tensorboard/, loss.png,
checkpoints/step-N/ and final/ (the model in the published layout: `spectrosynth render --model
OUT_DIR/final`, and diffusers' loaders read it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from spectrosynth import weights
from spectrosynth.errors import SpectrosynthError
from spectrosynth.precision import cpu_bfloat16_is_faster, cuda_bfloat16_is_native
from spectrosynth.training import checkpoint as ckpt
from spectrosynth.training.ema import DEFAULT_MAX_DECAY, DEFAULT_POWER, WeightAverage
from spectrosynth.training.examples import TrainingExamples, collate, validation_examples
from spectrosynth.training.logs import PLOT, MetricsLog, plot_losses
from spectrosynth.training.model import (
    LORA_TARGETS,
    add_lora,
    check_size,
    load_networks,
    merged_decoder,
    new_networks,
    save_published,
    size_configs,
)
from spectrosynth.training.objective import DiffusionObjective
from spectrosynth.training.optim import (
    DEFAULT_COOLDOWN,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    lr_schedule,
    make_optimizer,
    restore_schedule,
)

MODES = ("full", "decoder", "lora")
FINAL_WEIGHTS = ("ema", "raw")
PRECISIONS = ("auto", "float32", "bfloat16")
RUN_FILE = "run.json"
FINAL = "final"


@dataclass(frozen=True)
class TrainOptions:
    """Everything a run is made of. None means: the recipe's default for this kind of run (optim.RECIPES)."""

    data_dir: str
    out_dir: str
    config: str | None = None  # from scratch: a size (presets.SIZES) or a JSON file; default mini
    init: str | None = None  # fine-tune this model (hub id or folder in the published layout)
    revision: str | None = None
    mode: str = "full"  # full | decoder (frozen encoders) | lora (decoder adapters)
    max_steps: int | None = None
    batch_size: int = 32  # examples per optimizer step, over all processes and micro-batches
    grad_accum: int = 1  # micro-batches per step and process
    lr: float | None = None
    warmup: int | None = None
    lr_schedule: str = "constant"  # after the warm-up: constant (the original's), cosine, linear or wsd to 0
    cooldown: float = DEFAULT_COOLDOWN  # wsd: the decay's share of max_steps (below 1) or its steps
    optimizer: str | None = None  # adafactor | adamw
    grad_clip: float | None = None  # max gradient norm, 0 = none
    precision: str = "auto"  # auto | float32 | bfloat16 (autocast)
    dropout: float | None = None  # network dropout; default: the config's (0.1, as the original)
    cfg_dropout: float = 0.1  # share of examples without conditions (classifier-free guidance)
    start_rate: float = 0.05  # share of examples that are a song's opening with no context
    lora_rank: int = 16
    lora_alpha: float | None = None  # default: the rank
    lora_targets: str = "attention"
    ema_decay: float = DEFAULT_MAX_DECAY  # the EMA's ceiling (training/ema.py); 0: no EMA
    ema_power: float = DEFAULT_POWER  # the warm-up of its decay
    final_weights: str = "ema"  # what final/ holds: ema (the average, where there is one) or raw
    seed: int = 0
    val_every: int = 500
    val_examples: int = 64
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    keep_doublings: bool = False  # also keep the checkpoints at checkpoint_every x 1, 2, 4, 8, ...
    log_every: int = 10
    device: str = "auto"
    workers: int = 0  # data-loading processes per training process
    vocoder: str | None = None  # whose melgan/model.onnx the result ships with
    cache_gb: float = 4.0  # songs kept in memory per process

    #: Options a resumed run may change: they do not change what is computed (but for the schedule's end).
    RUN_CONTROL = (
        "max_steps",
        "val_every",
        "checkpoint_every",
        "keep_checkpoints",
        "keep_doublings",
        "log_every",
        "workers",
        "cache_gb",
        "final_weights",
    )
    #: Options a resumed run may also change, to change what follows: the learning-rate schedule (a run
    #: started constant switches to a wsd cool-down; the note says when the rate jumps).
    RESCHEDULE = ("lr_schedule", "cooldown")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def kind(self) -> str:
        return "scratch" if self.init is None else self.mode


@dataclass(frozen=True)
class TrainProgress:
    """What a run reports to its caller (rank 0 only)."""

    event: str  # "start" | "step" | "validation" | "checkpoint" | "done" | "note"
    step: int
    max_steps: int
    loss: float | None = None  # mean training loss since the previous report
    val_loss: float | None = None
    lr: float | None = None
    examples_per_second: float | None = None
    eta_seconds: float | None = None
    message: str = ""


Callback = Callable[[TrainProgress], None]


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _distributed() -> Distributed:
    """From torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def _device(options: TrainOptions, dist: Distributed) -> torch.device:
    from spectrosynth.pipeline import resolve_device

    device = resolve_device(options.device)
    if device.type == "cuda" and dist.active and device.index is None:
        device = torch.device("cuda", dist.local_rank)
    return device


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast where the device is fast at it, else none (float32).

    CUDA: where bfloat16 is supported. A CPU: where bfloat16 matrix products were measured clearly faster
    than float32 (once per machine, or SPECTROSYNTH_CPU_DTYPE: spectrosynth.precision). CPU flags do not
    tell: with AMX they are several times faster; with AVX512-BF16 alone they were 1.5x slower on an Intel
    Xeon (docs/performance.md) and 1.75x faster per training step on an AMD EPYC (Zen 5)."""
    if precision not in PRECISIONS:
        raise SpectrosynthError(f"unknown --precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if cuda_bfloat16_is_native() else None
    return torch.bfloat16 if cpu_bfloat16_is_faster() else None


def resolved_precision(precision: str, device: torch.device) -> str:
    """'auto' made concrete for this device (what run.json records, so a resumed run keeps it)."""
    return "bfloat16" if _autocast_dtype(precision, device) is not None else "float32"


def check_options(o: TrainOptions) -> None:
    """One-line errors for options that cannot work, before any work."""
    if o.mode not in MODES:
        raise SpectrosynthError(f"unknown --mode {o.mode!r}; use {', '.join(MODES)}")
    if o.mode != "full" and o.init is None:
        raise SpectrosynthError(f"--mode {o.mode} fine-tunes a model: give the model with --init")
    if o.optimizer is not None and o.optimizer not in OPTIMIZERS:
        raise SpectrosynthError(f"unknown --optimizer {o.optimizer!r}; use {', '.join(OPTIMIZERS)}")
    if o.lr_schedule not in SCHEDULES:
        raise SpectrosynthError(f"unknown --lr-schedule {o.lr_schedule!r}; use {', '.join(SCHEDULES)}")
    if o.lora_targets not in LORA_TARGETS:
        raise SpectrosynthError(f"unknown --lora-targets {o.lora_targets!r}; use {', '.join(LORA_TARGETS)}")
    for name, value, low in (
        ("--batch-size", o.batch_size, 1),
        ("--grad-accum", o.grad_accum, 1),
        ("--lora-rank", o.lora_rank, 1),
        ("--max-steps", o.max_steps or 1, 1),
    ):
        if value < low:
            raise SpectrosynthError(f"{name} must be at least {low}, not {value}")
    for name, value, top in (
        ("--cfg-dropout", o.cfg_dropout, 1.0),
        ("--dropout", o.dropout or 0.0, 1.0),
        ("--start-rate", o.start_rate, None),
    ):
        if not (0.0 <= value < top if top else 0.0 <= value <= 1.0):
            raise SpectrosynthError(f"{name} must be from 0 to {'below 1' if top else '1'}, not {value}")
    if o.lr is not None and not (math.isfinite(o.lr) and o.lr > 0):
        raise SpectrosynthError(f"--lr must be a positive number, not {o.lr}")
    if o.precision not in PRECISIONS:
        raise SpectrosynthError(f"unknown --precision {o.precision!r}; use {', '.join(PRECISIONS)}")
    if o.final_weights not in FINAL_WEIGHTS:
        raise SpectrosynthError(
            f"unknown --final-weights {o.final_weights!r}; use {', '.join(FINAL_WEIGHTS)}"
        )
    if not 0.0 <= o.ema_decay < 1.0:
        raise SpectrosynthError(f"--ema-decay must be from 0 (no EMA) to below 1, not {o.ema_decay}")
    if not (math.isfinite(o.ema_power) and o.ema_power > 0):
        raise SpectrosynthError(f"--ema-power must be a positive number, not {o.ema_power}")
    if not (
        math.isfinite(o.cooldown) and o.cooldown > 0 and (o.cooldown < 1 or o.cooldown == int(o.cooldown))
    ):
        raise SpectrosynthError(
            f"--cooldown must be a share of the run below 1 (e.g. 0.2) or a whole number of steps, "
            f"not {o.cooldown}"
        )


def _micro_batch(o: TrainOptions, world: int) -> int:
    per = o.batch_size / (world * o.grad_accum)
    if per != int(per):
        raise SpectrosynthError(
            f"--batch-size {o.batch_size} does not split into {world} processes x {o.grad_accum} "
            "micro-batches; make it a multiple of their product"
        )
    return int(per)


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints and stops after the current step. A second Ctrl-C
    stops at once (the last checkpoint is kept)."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _dataset_fingerprint(reader) -> str:
    text = "\n".join(f"{s.id}\t{s.split}\t{s.num_frames}" for s in reader.songs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _new_run(o: TrainOptions) -> None:
    out = Path(o.out_dir)
    if (out / RUN_FILE).exists() or ckpt.latest(out):
        raise SpectrosynthError(
            f"{out} already holds a training run; add --resume to continue it, or choose a new OUT_DIR"
        )


def _keep_schedule(out: Path, o: TrainOptions) -> None:
    """A resume that switched the schedule (TrainOptions.RESCHEDULE) records it, with the --max-steps it
    ends at, in run.json, so that the next --resume continues the new schedule rather than the old one."""
    run_file = out / RUN_FILE
    stored = json.loads(run_file.read_text(encoding="utf-8"))
    if all(stored.get(k) == getattr(o, k) for k in TrainOptions.RESCHEDULE):
        return
    stored.update({k: getattr(o, k) for k in (*TrainOptions.RESCHEDULE, "max_steps")})
    from spectrosynth.audio import atomic_file

    with atomic_file(run_file, force=True) as f:
        f.write((json.dumps(stored, indent=2) + "\n").encode())


def resumed_options(out_dir: str | os.PathLike[str], **changes: Any) -> TrainOptions:
    """The options of the run in `out_dir`, with `changes`: the data folder, the device, and the options
    that do not change what is computed (TrainOptions.RUN_CONTROL); any other change is an error."""
    out = Path(out_dir)
    run_file = out / RUN_FILE
    if not run_file.exists():
        raise SpectrosynthError(
            f"--resume: {out} holds no training run (no {RUN_FILE}); start one without it"
        )
    try:
        stored = TrainOptions.from_dict(json.loads(run_file.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise SpectrosynthError(f"{run_file} is damaged ({e}); restore it to resume") from None
    allowed = {*TrainOptions.RUN_CONTROL, *TrainOptions.RESCHEDULE, "data_dir", "device"}
    refused = sorted(k for k, v in changes.items() if k not in allowed and v != getattr(stored, k))
    if refused:
        was = ", ".join(f"--{k.replace('_', '-')} {getattr(stored, k)}" for k in refused)
        raise SpectrosynthError(
            f"--resume continues the run as it was started ({was}); leave those options out, or start a new "
            "run in another OUT_DIR"
        )
    return replace(stored, out_dir=str(out), **{k: v for k, v in changes.items() if k in allowed})


def _find_vocoder(o: TrainOptions, init_folder: Path | None) -> Path | None:
    """The SoundStream inverter the result ships with: --vocoder (a model or an .onnx file), else the init
    model's, else the published model's if it is in the Hugging Face cache."""
    if o.vocoder is not None:
        path = Path(o.vocoder)
        if path.is_file():
            return path
        return weights.resolve_model(o.vocoder, progress=False) / weights.MELGAN
    if init_folder is not None and (init_folder / weights.MELGAN).is_file():
        return init_folder / weights.MELGAN
    try:
        cached = weights._cached_snapshot(weights.DEFAULT_MODEL, None)
    except Exception:  # noqa: BLE001 - no usable cache: the result ships without a vocoder
        cached = None
    if cached is not None and (cached / weights.MELGAN).is_file():
        return cached / weights.MELGAN
    return None


@dataclass(frozen=True)
class TrainResult:
    model: Path  # OUT_DIR/final, in the published layout
    step: int  # steps trained so far (over every run)
    stopped: bool  # stopped early (Ctrl-C, SIGTERM) after checkpointing; --resume goes on


def train(o: TrainOptions, callback: Callback | None = None, resume: bool = False) -> TrainResult:
    """Run training, or with `resume` continue the run in o.out_dir (whose options `resumed_options`
    gives). See the module docstring."""
    check_options(o)
    dist = _distributed()
    if not resume and dist.main:
        _new_run(o)
    tell = callback if (callback is not None and dist.main) else (lambda p: None)
    resume_from = ckpt.latest(Path(o.out_dir)) if resume else None
    recipe = RECIPES[o.kind]
    max_steps = o.max_steps or recipe.max_steps
    device = _device(o, dist)
    if dist.active and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend)
        torch.distributed.barrier()  # rank 0 has checked OUT_DIR before any process writes there
    try:
        return _train(o, dist, device, recipe, max_steps, resume_from, tell)
    finally:
        if dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(o, dist, device, recipe, max_steps, resume_from, tell) -> TrainResult:
    from spectrosynth.data.store import DatasetReader

    out = Path(o.out_dir)
    micro = _micro_batch(o, dist.world)
    reader = DatasetReader(o.data_dir, cache_bytes=int(o.cache_gb * (1 << 30)))
    examples = TrainingExamples(reader, o.seed, o.cfg_dropout, o.start_rate)
    validation = validation_examples(reader, o.val_examples, o.seed) if dist.main else []

    init_folder = None
    if o.init is not None:
        # A model trained here may have no vocoder: training needs only its networks.
        init_folder = weights.resolve_model(o.init, revision=o.revision, progress=dist.main, vocoder=False)
        nets, configs = load_networks(init_folder, o.dropout)
        if o.config is not None:
            check_size(configs, size_configs(o.config), o.init)
    else:
        configs = size_configs(o.config or "mini", o.dropout)
        nets = new_networks(configs, o.seed)
    if o.mode == "lora":
        torch.manual_seed(o.seed)  # peft draws the adapters' A matrices from torch's global generator
        nets["decoder"] = add_lora(nets["decoder"], o.lora_rank, o.lora_alpha or o.lora_rank, o.lora_targets)
    model = (
        DiffusionObjective(
            nets["notes_encoder"],
            nets["continuous_encoder"],
            nets["decoder"],
            train_encoders=o.mode == "full",
        )
        .to(device)
        .train()
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = o.lr if o.lr is not None else recipe.lr
    warmup = o.warmup if o.warmup is not None else recipe.warmup
    grad_clip = o.grad_clip if o.grad_clip is not None else recipe.grad_clip
    optimizer = make_optimizer(o.optimizer or recipe.optimizer, trainable, lr)
    schedule = lr_schedule(optimizer, warmup, o.lr_schedule, max_steps, o.cooldown)
    # The EMA is kept by the process that validates and saves.
    ema = WeightAverage(model, o.ema_decay, o.ema_power) if o.ema_decay > 0 and dist.main else None
    autocast = _autocast_dtype(o.precision, device)
    if dist.active:  # every process computes in rank 0's precision (each CPU's probe could differ)
        agreed = torch.tensor([1.0 if autocast is not None else 0.0], device=device)
        torch.distributed.broadcast(agreed, src=0)
        autocast = torch.bfloat16 if agreed.item() else None

    step, wall_before = 0, 0.0
    fingerprint = _dataset_fingerprint(reader)
    if resume_from is not None:
        optimizer_state, state = ckpt.load(resume_from, model)
        optimizer.load_state_dict(optimizer_state["optimizer"])
        restore_schedule(schedule, optimizer_state["schedule"])
        step, wall_before = state["step"], state.get("wall_seconds", 0.0)
        now_lr = schedule.get_last_lr()[0]
        if state.get("lr") is not None and not math.isclose(state["lr"], now_lr, rel_tol=1e-9):
            tell(
                TrainProgress(
                    "note",
                    step,
                    max_steps,
                    message=f"the learning rate goes from {state['lr']:.3g} to {now_lr:.3g} at step {step} "
                    f"(--lr-schedule {o.lr_schedule}, --max-steps {max_steps}"
                    + (f", --cooldown {o.cooldown:g}" if o.lr_schedule == "wsd" else "")
                    + ")",
                )
            )
        if dist.main:
            _keep_schedule(out, o)
        if ema is not None:
            averaged = ckpt.load_ema(resume_from)
            if averaged is None:
                tell(
                    TrainProgress(
                        "note",
                        step,
                        max_steps,
                        message=f"the checkpoint of step {step} has no weight average (EMA): it starts "
                        "here from the weights",
                    )
                )
            else:
                try:
                    ema.load_state_dict(*averaged)
                except ValueError as e:
                    raise ckpt.CheckpointError(
                        f"checkpoint {resume_from.path} has a weight average that does not fit this run ({e})"
                    ) from None
        if state.get("dataset") != fingerprint:
            tell(
                TrainProgress(
                    "note",
                    step,
                    max_steps,
                    message="the dataset changed since this run started: "
                    "the examples drawn from now on differ from those of an uninterrupted run",
                )
            )
    elif dist.main:
        out.mkdir(parents=True, exist_ok=True)
        stored = replace(o, precision=resolved_precision(o.precision, device))  # a resumed run keeps it
        (out / RUN_FILE).write_text(json.dumps(stored.to_dict(), indent=2) + "\n", encoding="utf-8")
    if dist.main:
        ckpt.remove_temporaries(out)

    ddp = model
    if dist.active:
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # batches are moved to the device by the loop
    loader = torch.utils.data.DataLoader(
        examples,
        batch_sampler=_RankBatches(step, max_steps, o.batch_size, o.grad_accum, micro, dist),
        collate_fn=collate,
        num_workers=o.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_interrupts if o.workers else None,
    )
    log = MetricsLog(out, step) if dist.main else None
    described = (
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
        f"{sum(p.numel() for p in trainable) / 1e6:.2f} M trained"
    )
    tell(
        TrainProgress(
            "start",
            step,
            max_steps,
            message=f"{o.kind} training on {device} "
            f"({'bfloat16 autocast' if autocast else 'float32'}), {described}; "
            f"{len(examples.songs)} training songs, {len(validation)} validation examples"
            + (
                ""
                if validation or not dist.main
                else " (no held-out songs: build the dataset with --holdout for a validation loss)"
            ),
        )
    )

    def save_checkpoint(at: int, loss: float | None) -> None:
        if dist.main:
            state = {
                "wall_seconds": wall_before + time.monotonic() - began,
                "loss": loss,
                "dataset": fingerprint,
            }
            state["lr"] = schedule.get_last_lr()[0]  # the rate of the next step
            opt = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
            path = ckpt.save(
                out,
                at,
                model,
                opt,
                state,
                o.keep_checkpoints,
                average=None if ema is None else (ema.state_dict(), ema.updates),
                keep_also=_doublings(o.checkpoint_every) if o.keep_doublings else None,
            )
            tell(TrainProgress("checkpoint", at, max_steps, message=str(path)))
        if dist.active:
            torch.distributed.barrier()

    def run_validation(at: int) -> float | None:
        value = None
        if dist.main and validation:
            raw = _validate(model, validation, micro, device, autocast)
            value = raw
            if ema is not None:  # the loss is the average's; the raw weights' is logged beside it
                with ema.applied():
                    value = _validate(model, validation, micro, device, autocast)
            log.write(at, examples=at * o.batch_size, val_loss=value, val_loss_raw=raw if ema else None)
            tell(TrainProgress("validation", at, max_steps, val_loss=value))
        return value

    began = time.monotonic()
    window_loss, window_steps, window_start = 0.0, 0, time.monotonic()
    last_loss = None
    batches = iter(loader)
    try:
        with _StopRequest() as stop:
            if step == 0 and o.val_every > 0:
                run_validation(0)
            while step < max_steps:
                optimizer.zero_grad(set_to_none=True)
                step_loss = torch.zeros((), device=device)
                for m in range(o.grad_accum):
                    batch = next(batches).to(device)
                    torch.manual_seed(_dropout_seed(o.seed, step, dist.rank, m))
                    sync = m == o.grad_accum - 1 or not dist.active
                    context = ddp.no_sync() if not sync else contextlib.nullcontext()
                    with (
                        context,
                        torch.autocast(
                            device.type, dtype=autocast or torch.float32, enabled=autocast is not None
                        ),
                    ):
                        losses = ddp(batch)
                        loss = losses.sum() * (dist.world / o.batch_size)
                    loss.backward()
                    step_loss += losses.detach().sum()
                grad_norm = _clip(trainable, grad_clip)
                optimizer.step()
                schedule.step()
                if ema is not None:
                    ema.update()
                step += 1
                if dist.active:
                    torch.distributed.all_reduce(step_loss)
                mean = float(step_loss) / o.batch_size
                if not math.isfinite(mean):
                    raise SpectrosynthError(
                        f"the loss became {mean} at step {step}; lower --lr, or resume from the last "
                        "checkpoint with --precision float32"
                    )
                last_loss = mean
                window_loss, window_steps = window_loss + mean, window_steps + 1
                if step % o.log_every == 0 or step == max_steps:
                    now = time.monotonic()
                    speed = window_steps * o.batch_size / max(now - window_start, 1e-9)
                    eta = (max_steps - step) * o.batch_size / speed
                    current_lr = schedule.get_last_lr()[0]
                    if dist.main:
                        log.write(
                            step,
                            examples=step * o.batch_size,
                            wall_seconds=wall_before + now - began,
                            loss=window_loss / window_steps,
                            lr=current_lr,
                            grad_norm=grad_norm,
                            examples_per_second=speed,
                        )
                    tell(
                        TrainProgress(
                            "step",
                            step,
                            max_steps,
                            loss=window_loss / window_steps,
                            lr=current_lr,
                            examples_per_second=speed,
                            eta_seconds=eta,
                        )
                    )
                    window_loss, window_steps, window_start = 0.0, 0, now
                paused = time.monotonic()  # validation and checkpoints are not counted in examples/s
                if o.val_every > 0 and step % o.val_every == 0:
                    run_validation(step)
                stopping = _agree(stop.requested, dist, device)
                if step % o.checkpoint_every == 0 or step == max_steps or stopping:
                    save_checkpoint(step, last_loss)
                window_start += time.monotonic() - paused
                if stopping:
                    break
        with ema.applied() if ema is not None and o.final_weights == "ema" else contextlib.nullcontext():
            final = _finish(o, out, model, configs, init_folder, dist)
        tell(TrainProgress("done", step, max_steps, loss=last_loss, message=str(final)))
        return TrainResult(final, step, step < max_steps)
    finally:
        if log is not None:
            log.close()


def _finish(o, out: Path, model: DiffusionObjective, configs, init_folder, dist) -> Path:
    """Rank 0: the model in the published layout (LoRA merged) as OUT_DIR/final, and the loss plot."""
    final = out / FINAL
    if dist.main:
        decoder = model.decoder
        if o.mode == "lora":
            decoder = merged_decoder(decoder, configs)
        nets = {
            "notes_encoder": model.notes_encoder,
            "continuous_encoder": model.context_encoder,
            "decoder": decoder,
        }
        save_published(final, nets, configs, _find_vocoder(o, init_folder))
        try:
            what = f"{o.mode} fine-tuning of {o.init}" if o.init else f"{o.config or 'mini'} from scratch"
            dataset = "/".join(Path(o.data_dir).resolve().parts[-2:])
            plot_losses(out / "metrics.csv", out / PLOT, title=f"{what}, dataset {dataset}")
        except ImportError:  # matplotlib is optional for the loop itself
            pass
    if dist.active:
        torch.distributed.barrier()
    return final


def _validate(model, examples, micro, device, autocast) -> float:
    """Mean loss over the fixed validation examples, in eval mode (no dropout)."""
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for i in range(0, len(examples), micro):
                batch = collate(examples[i : i + micro]).to(device)
                with torch.autocast(
                    device.type, dtype=autocast or torch.float32, enabled=autocast is not None
                ):
                    total += float(model(batch).sum())
    finally:
        model.train()
    return total / len(examples)


def _clip(params, max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (0: no clipping); returns the norm before."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def _agree(flag: bool, dist: Distributed, device: torch.device) -> bool:
    """Whether any process was asked to stop (all processes must stop at the same step)."""
    if not dist.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)


def _doublings(every: int) -> Callable[[int], bool]:
    """Whether a step is `every` times a power of two (the checkpoints --keep-doublings keeps)."""

    def keep(step: int) -> bool:
        quotient, rest = divmod(step, every)
        return rest == 0 and quotient > 0 and quotient & (quotient - 1) == 0

    return keep


def _dropout_seed(seed: int, step: int, rank: int, micro: int) -> int:
    digest = hashlib.sha256(f"{seed}:{step}:{rank}:{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _ignore_interrupts(_worker: int) -> None:
    """In data-loading processes: Ctrl-C is for the training process, which checkpoints and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _RankBatches:
    """The example indices of this process's micro-batches, from step `start` to `stop`: step k covers
    examples k * batch .. (k + 1) * batch - 1, split into micro-batches and processes."""

    def __init__(self, start: int, stop: int, batch: int, accum: int, micro: int, dist: Distributed):
        self.start, self.stop, self.batch, self.accum, self.micro, self.dist = (
            start,
            stop,
            batch,
            accum,
            micro,
            dist,
        )

    def __iter__(self):
        for k in range(self.start, self.stop):
            for m in range(self.accum):
                base = k * self.batch + (m * self.dist.world + self.dist.rank) * self.micro
                yield list(range(base, base + self.micro))

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum
