"""`spectrosynth train`: train a model from scratch, or fine-tune one, on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from spectrosynth.cli.app import app
from spectrosynth.cli.common import (
    DeviceOpt,
    QuietOpt,
    RevisionOpt,
    fail,
    friendly_errors,
    is_main_process,
    note,
)


def _train_options(**given) -> dict[str, Any]:
    """The options given on the command line (None: not given), as TrainOptions fields."""
    return {k: v for k, v in given.items() if v is not None}


def _given(kind: type, *names: str, metavar: str, help: str, **limits) -> Any:
    """A `train` option whose absence is None (the run's recipe decides, or --resume keeps the stored one)."""
    return Annotated[kind | None, typer.Option(*names, metavar=metavar, help=help, **limits)]


@app.command("train")
@friendly_errors
def train_command(
    data_dir: Annotated[Path, typer.Argument(help="A dataset (spectrosynth dataset).", metavar="DATA_DIR")],
    out_dir: Annotated[Path, typer.Argument(help="Run folder: checkpoints, logs, final/", metavar="OUT_DIR")],
    config: _given(str, "--config", metavar="SIZE|FILE.json", help="From scratch: tiny, mini (default), "
                   "small, base (the authors' sizes), or a JSON file of d_model, num_layers, num_heads, "
                   "d_kv, d_ff.") = None,
    init: _given(str, "--init", metavar="REPO|DIR", help="Fine-tune this model (a hub repo id or a folder in "
                 "the published layout), e.g. google/music-spectrogram-diffusion.") = None,
    revision: RevisionOpt = None,
    mode: _given(str, "--mode", metavar="full|decoder|lora", help="full: every network; decoder: the decoder "
                 "alone, encoders frozen; lora: LoRA adapters on the decoder, merged into the saved model. "
                 "Default: full.") = None,
    max_steps: _given(int, "--max-steps", metavar="N", min=1, help="Optimizer steps in all. Default: "
                      "500000 from scratch (the original), 5000 to fine-tune.") = None,
    batch_size: _given(int, "--batch-size", "-b", metavar="N", min=1, help="Examples per optimizer step, "
                       "over all processes. Default: 32.") = None,
    grad_accum: _given(int, "--grad-accum", metavar="K", min=1, help="Micro-batches per step (each process): "
                       "less memory, the same step.") = None,
    lr: _given(float, "--lr", metavar="LR", help="Learning rate. Default: 1e-3 from scratch, 1e-4 to "
               "fine-tune.") = None,
    warmup: _given(int, "--warmup", metavar="STEPS", min=0, help="Linear warm-up steps. Default: 0 (100 for "
                   "LoRA).") = None,
    lr_schedule: _given(str, "--lr-schedule", metavar="constant|cosine|linear|wsd", help="After the "
                        "warm-up: constant (the original's, the default), a cosine or linear decay to 0 at "
                        "--max-steps, or wsd: constant, then a cool-down to 0 over the run's last "
                        "--cooldown. A constant run can switch to wsd with --resume.") = None,
    cooldown: _given(float, "--cooldown", metavar="SHARE|STEPS", help="wsd: the cool-down's length, a share "
                     "of --max-steps (below 1) or a number of steps. Default: 0.2.") = None,
    optimizer: _given(str, "--optimizer", metavar="adafactor|adamw", help="Default: adafactor (as the "
                      "original), adamw for LoRA.") = None,
    grad_clip: _given(float, "--grad-clip", metavar="NORM", min=0.0, help="Clip the gradient norm (0: "
                      "never). Default: 0 (as the original), 1 for LoRA.") = None,
    precision: _given(str, "--precision", metavar="auto|float32|bfloat16", help="auto: bfloat16 autocast "
                      "where the device is fast at it (CUDA; a CPU, measured once per machine).") = None,
    dropout: _given(float, "--dropout", metavar="P", min=0.0, max=0.99, help="Network dropout. Default: "
                    "0.1.") = None,
    cfg_dropout: _given(float, "--cfg-dropout", metavar="P", min=0.0, max=0.99, help="Share of examples "
                        "trained without conditions, for guidance. Default: 0.1.") = None,
    start_rate: _given(float, "--start-rate", metavar="P", min=0.0, max=1.0, help="Share of examples that "
                       "are a song's opening, with no context (as a render's first segment). "
                       "Default: 0.05.") = None,
    lora_rank: _given(int, "--lora-rank", metavar="R", min=1, help="Default: 16.") = None,
    lora_alpha: _given(float, "--lora-alpha", metavar="A", help="Default: the rank.") = None,
    lora_targets: _given(str, "--lora-targets", metavar="attention|attention+film|all",
                         help="Default: attention.") = None,
    ema_decay: _given(float, "--ema-decay", metavar="D", help="Keep an exponential moving average of the "
                      "weights, its decay warming up to at most D; 0: none. It is validated and saved as "
                      "final/. Default: 0.9999.") = None,
    ema_power: _given(float, "--ema-power", metavar="P", help="The EMA warm-up: decay 1 - (1 + step)^-P. "
                      "Default: 0.75.") = None,
    final_weights: _given(str, "--final-weights", metavar="ema|raw", help="What final/ holds: the weight "
                          "average (default, where there is one) or the last weights.") = None,
    seed: _given(int, "--seed", metavar="N", min=0, help="Default: 0.") = None,
    val_every: _given(int, "--val-every", metavar="N", min=0, help="Validation loss every N steps (0: "
                      "never). Default: 500.") = None,
    val_examples: _given(int, "--val-examples", metavar="N", min=1, help="Default: 64.") = None,
    checkpoint_every: _given(int, "--checkpoint-every", metavar="N", min=1, help="Default: 1000.") = None,
    keep_checkpoints: _given(int, "--keep-checkpoints", metavar="K", min=1, help="Default: 3.") = None,
    keep_doublings: Annotated[
        bool | None,
        typer.Option("--keep-doublings", help="Also keep the checkpoints at every doubling of the step "
                     "count (--checkpoint-every x 1, 2, 4, 8, ...), to look back along the run."),
    ] = None,
    log_every: _given(int, "--log-every", metavar="N", min=1, help="Default: 10.") = None,
    device: DeviceOpt = "auto",
    workers: _given(int, "--workers", metavar="N", min=0, help="Data-loading processes per training "
                    "process.") = None,
    vocoder: _given(str, "--vocoder", metavar="REPO|DIR|FILE.onnx", help="Ship final/ with this model's "
                    "SoundStream inverter. Default: the --init model's, or the published model's when it is "
                    "in the Hugging Face cache.") = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in OUT_DIR from its last checkpoint.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:  # fmt: skip
    """Train a model from scratch, or fine-tune one, on a dataset from `spectrosynth dataset`.

    The result is OUT_DIR/final in the published layout: render with it as with the published model.
    Ctrl-C (or SIGTERM) checkpoints and stops; --resume continues exactly where it stopped. On several
    GPUs or machines: torchrun --nproc_per_node N -m spectrosynth train ... (docs/training.md).

    Examples:

      spectrosynth train data/ runs/mine --init google/music-spectrogram-diffusion --mode lora

      spectrosynth train data/ runs/scratch --config small --batch-size 64

      spectrosynth train data/ runs/mine --resume
    """
    from spectrosynth.progress import TrainProgressDisplay
    from spectrosynth.training import TrainOptions, resumed_options, train

    given = _train_options(
        config=config, init=init, revision=revision, mode=mode, max_steps=max_steps, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, warmup=warmup, lr_schedule=lr_schedule, cooldown=cooldown,
        optimizer=optimizer, ema_decay=ema_decay, ema_power=ema_power, final_weights=final_weights,
        grad_clip=grad_clip, precision=precision, dropout=dropout, cfg_dropout=cfg_dropout,
        start_rate=start_rate, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
        seed=seed, val_every=val_every, val_examples=val_examples, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints, keep_doublings=keep_doublings, log_every=log_every,
        workers=workers, vocoder=vocoder,
    )  # fmt: skip
    if resume:
        options = resumed_options(out_dir, data_dir=str(data_dir), device=device, **given)
    else:
        options = TrainOptions(str(data_dir), str(out_dir), device=device, **given)
    quiet = quiet or not is_main_process()
    with TrainProgressDisplay(quiet) as display:
        result = train(options, callback=display, resume=resume)
    if result.stopped:
        raise fail(
            f"stopped at step {result.step} after writing a checkpoint; run the same command with --resume "
            "to go on",
            130,
        )
    note(
        f"trained {result.step} steps; the model is in {result.model} (spectrosynth render song.mid out.wav "
        f"--model {result.model})",
        quiet,
    )
