"""`mclstudio train`: meta-train a learner (DDP under torchrun)."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from mclstudio.choices import LEARNER_NAMES, OBJECTIVES
from mclstudio.cli.interrupt import exit_interrupted, stopping_message
from mclstudio.cli.options import (
    AMOUNT, COUNT, NON_NEGATIVE, PROBABILITY, RATE, SHARE, device_option, output_options, resume_option, torchvision_options,
    train_precision_option,
)
from mclstudio.formatting import strict_json

TRAIN_CHECKPOINT_ESTIMATE = 32 << 20  # bytes a new training checkpoint may need: shipped ones are ~6 MB


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


# The learner-size options' parameter names -> the LearnerConfig fields they set (unset: the learner's default).
LEARNER_FIELDS = {"d_model": "d_model", "layers": "n_layers", "d_state": "d_state", "heads": "n_heads",
                  "d_ff": "d_ff", "features": "n_features", "y_vocab": "y_vocab",
                  "encoder_channels": "encoder_channels", "dropout": "dropout"}


def _learner_overrides(kw: dict[str, Any]) -> dict[str, Any]:
    """Take the learner-size options out of ``kw``; the config fields of those that were given."""
    given = {name: kw.pop(name) for name in LEARNER_FIELDS}
    return {LEARNER_FIELDS[name]: value for name, value in given.items() if value is not None}


@click.command(name="train")
@click.option("--model", type=click.Choice(LEARNER_NAMES), default="mamba", show_default=True)
@click.option("--dataset", default="omniglot-mini", show_default=True,
              help="omniglot-mini, sine, or torchvision:<Name> (e.g. torchvision:Omniglot).")
@torchvision_options
@click.option("--tasks", type=COUNT, default=20, show_default=True, help="Tasks (classes) per episode.")
@click.option("--shots", type=COUNT, default=5, show_default=True, help="Training shots per task.")
@click.option("--test-shots", type=COUNT, default=5, show_default=True, help="Query shots per task.")
@click.option("--tasks-range", default=None, metavar="MIN:MAX",
              help="Sample each step's tasks uniformly in MIN..MAX (e.g. 1:20) instead of the fixed --tasks.")
@click.option("--shots-range", default=None, metavar="MIN:MAX",
              help="Sample each task's training shots uniformly in MIN..MAX (e.g. 1:10), uneven within a stream.")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Class-level augmentation of the meta-train images (flips as new classes, affine, stroke width).")
@click.option("--rotate-embeddings", type=SHARE, default=0.0, show_default=True, metavar="SHARE",
              help="Share of episodes whose frozen encoder embeddings get a random rotation (needs a frozen "
                   "encoder for the whole run).")
@click.option("--init-from", default=None, metavar="CKPT",
              help="Start from this checkpoint's weights (same learner config) with a fresh optimizer and no "
                   "encoder pre-training.")
@click.option("--noise", type=AMOUNT, default=0.0, show_default=True, help="Gaussian input-noise std during training.")
@click.option("--steps", type=COUNT, default=2000, show_default=True)
@click.option("--batch-size", type=COUNT, default=16, show_default=True, help="Episodes per step (per process).")
@click.option("--lr", type=RATE, default=1e-4, show_default=True)
@click.option("--lr-halve-every", type=COUNT, default=10000, show_default=True)
@click.option("--warmup", type=NON_NEGATIVE, default=100, show_default=True, help="Linear learning-rate warm-up steps.")
@click.option("--slct-lambda", type=AMOUNT, default=0.1, show_default=True, help="Selectivity regularisation weight (0 = off).")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="anytime", show_default=True,
              help="anytime: each query sees the stream up to a random task boundary at or after its task; "
                   "end: every query sees the whole stream.")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True)
@device_option
@train_precision_option
@click.option("--checkpoint-every", type=COUNT, default=500, show_default=True)
@click.option("--log-every", type=COUNT, default=25, show_default=True)
@output_options("Checkpoint path [a new folder runs/<model>-<dataset>-<date-time>/model.pt].", None,
                resume_option("Continue from the checkpoint at -o (which must be given)."))
@click.option("--pretrain-steps", type=NON_NEGATIVE, default=0, show_default=True,
              help="Pre-train the encoder with a prototypical loss on meta-train episodes first.")
@click.option("--frozen-encoder-steps", type=NON_NEGATIVE, default=0, show_default=True,
              help="Meta-train this many steps with the (pre-trained) encoder frozen before joint training.")
@click.option("--max-minutes", type=AMOUNT, default=0.0, show_default=True, help="Stop (with a checkpoint) after this long; 0 = no limit.")
@click.option("--log-file", default=None, help="Also append every log as a JSON line here (full precision).")
@click.option("--d-model", type=COUNT, default=None)
@click.option("--layers", type=COUNT, default=None)
@click.option("--d-state", type=COUNT, default=None, help="Mamba state size.")
@click.option("--heads", type=COUNT, default=None, help="Attention heads.")
@click.option("--d-ff", type=COUNT, default=None, help="Attention models' feed-forward width.")
@click.option("--features", type=COUNT, default=None, help="Performer random features.")
@click.option("--dropout", type=PROBABILITY, default=None, help="Attention models' dropout.")
@click.option("--y-vocab", type=COUNT, default=None, help="Label codes (size for the longest stream to test) [100].")
@click.option("--encoder-channels", type=COUNT, default=None)
@click.option("--compile/--no-compile", "compile_training", default=True, show_default=True,
              help="On CUDA, run the training pass's hot spots (the image encoder; Longhorn's transition) "
                   "through torch.compile.")
def train_command(**kw: Any) -> None:
    """Meta-train a learner on the meta-train split."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from mclstudio.data import parse_range
    from mclstudio.files import claim_output, new_run_path
    from mclstudio.training.interrupt import TrainingInterrupted, stop_on_signals
    from mclstudio.training.trainer import TrainConfig, TrainLog
    from mclstudio.training.trainer import train as run_training

    learner = _learner_overrides(kw)
    if kw["resume"] and not kw["out"]:
        raise ValueError("--resume needs -o, the checkpoint to continue from (e.g. -o runs/<run>/model.pt)")
    out = kw["out"] or str(new_run_path(f"{kw['model']}-{kw['dataset']}", "model.pt"))
    cfg = TrainConfig(
        model=kw["model"], dataset=kw["dataset"], root=kw["root"], download=kw["download"], tasks=kw["tasks"],
        train_shots=kw["shots"], test_shots=kw["test_shots"], noise_std=kw["noise"], steps=kw["steps"],
        batch_size=kw["batch_size"], lr=kw["lr"], lr_halve_every=kw["lr_halve_every"], warmup_steps=kw["warmup"],
        slct_lambda=kw["slct_lambda"], objective=kw["objective"], seed=kw["seed"], device=kw["device"],
        precision=kw["precision"],
        checkpoint_every=kw["checkpoint_every"], log_every=kw["log_every"],
        out=out, resume=kw["resume"], max_minutes=kw["max_minutes"], pretrain_steps=kw["pretrain_steps"],
        frozen_encoder_steps=kw["frozen_encoder_steps"], learner=learner, augment=kw["augment"],
        compile=kw["compile_training"], rotate_embeddings=kw["rotate_embeddings"], init_from=kw["init_from"],
        tasks_range=parse_range(kw["tasks_range"], "--tasks-range") if kw["tasks_range"] else None,
        shots_range=parse_range(kw["shots_range"], "--shots-range") if kw["shots_range"] else None,
    )
    cfg.validate()
    if kw["log_file"] and Path(kw["log_file"]).absolute() == Path(out).absolute():
        raise ValueError("--log-file and -o are the same file; give the log another name")
    resuming = kw["resume"] and Path(out).exists()
    # Under torchrun only rank 0 writes, so only it claims the output.
    claim = claim_output(out, replace=kw["force"] or kw["resume"], what="checkpoint", estimate_bytes=(
        2 * Path(out).stat().st_size if resuming else TRAIN_CHECKPOINT_ESTIMATE),
        hint="pass --resume to continue from it or --force to replace it") if _rank() == 0 else nullcontext()
    interactive = sys.stderr.isatty()
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=False, disable=not interactive,
    )
    bar = progress.add_task(f"train {cfg.model}", total=cfg.steps, stats="")

    log_file = None

    def on_log(log: TrainLog) -> None:
        if log_file is not None:
            log_file.write(strict_json(asdict(log)) + "\n")
            log_file.flush()
        stats = (f"loss {log.loss:.3f} (ce {log.task_loss:.3f} slct {log.slct_loss:.3f}) "
                 f"acc {log.accuracy:.3f} {log.episodes_per_s:.0f} ep/s")
        progress.update(bar, completed=log.step, stats=stats)
        if not interactive:
            click.echo(f"step {log.step}/{log.steps} {stats}", err=True)

    def on_pretrain_log(step: int, loss: float, accuracy: float) -> None:
        click.echo(f"encoder pre-training {step}/{cfg.pretrain_steps}: loss {loss:.3f} accuracy {accuracy:.3f}",
                   err=True)

    with claim, stop_on_signals(stopping_message):
        log_file = open(kw["log_file"], "a") if kw["log_file"] else None  # noqa: SIM115 (closed below)
        try:
            with progress:
                final = run_training(cfg, on_log, on_pretrain_log)
        except TrainingInterrupted as stop:
            exit_interrupted(stop, "checkpoint")
        finally:
            if log_file is not None:
                log_file.close()
    click.echo(f"saved {cfg.out} after {final.get('step', cfg.steps)} steps: " + ", ".join(
        f"{k} {v:.4g}" for k, v in final.items() if k in ("loss", "accuracy", "episodes_per_s")))

