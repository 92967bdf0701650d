"""The `mclstudio` command line.

Every command answers bad input with one line on stderr and a non-zero exit, never a traceback
(set MCLSTUDIO_DEBUG=1 to see one).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from mclstudio import __version__
from mclstudio.choices import LEARNER_NAMES
from mclstudio.errors import USER_ERRORS
from mclstudio.cli.options import AMOUNT, COUNT, NON_NEGATIVE, PROBABILITY, RATE, adapter_option, force_option, precision_option
from mclstudio.formatting import clip, strict_json



@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mclstudio")
def cli() -> None:
    """mclstudio: meta-continual learners (Mamba, Transformer, Linear Transformer, Performer) that learn
    in context, in the terminal."""


def _learner_overrides(**kw: Any) -> dict[str, Any]:
    names = {"d_model": "d_model", "layers": "n_layers", "d_state": "d_state", "heads": "n_heads",
             "d_ff": "d_ff", "features": "n_features", "y_vocab": "y_vocab", "encoder_channels": "encoder_channels",
             "dropout": "dropout"}
    return {names[k]: v for k, v in kw.items() if v is not None}


TRAIN_CHECKPOINT_ESTIMATE = 32 << 20  # bytes a new training checkpoint may need: shipped ones are ~6 MB
_ARGV: list[str] = []  # the arguments this process was run with (for the resume command after Ctrl-C)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _stopping_message() -> None:
    click.echo("\nstopping after this step to save a resumable file (Ctrl-C again to stop at once)", err=True)


def _interrupted(stop: Any, what: str) -> None:
    """Say where the resumable file is and how to continue; exit 130 (as for Ctrl-C)."""
    args, skip = [], False
    for arg in _ARGV:
        if skip:
            skip = False
        elif arg in ("-o", "--out"):
            skip = True
        elif not (arg.startswith("--out=") or arg in ("--force", "--resume")):
            args.append(arg)
    resume = shlex.join(["mclstudio", *args, "--resume", "-o", stop.path])
    click.echo(f"interrupted after step {stop.step}: saved a resumable {what} to {stop.path}; "
               f"continue with: {resume}", err=True)
    sys.exit(130)


@cli.command()
@click.option("--model", type=click.Choice(LEARNER_NAMES), default="mamba", show_default=True)
@click.option("--dataset", default="omniglot-mini", show_default=True,
              help="omniglot-mini, sine, or torchvision:<Name> (e.g. torchvision:Omniglot).")
@click.option("--root", default=None, help="Folder of a torchvision dataset.")
@click.option("--download", is_flag=True, help="Let torchvision download the dataset into --root.")
@click.option("--tasks", type=COUNT, default=20, show_default=True, help="Tasks (classes) per episode.")
@click.option("--shots", type=COUNT, default=5, show_default=True, help="Training shots per task.")
@click.option("--test-shots", type=COUNT, default=5, show_default=True, help="Query shots per task.")
@click.option("--tasks-range", default=None, metavar="MIN:MAX",
              help="Sample each step's tasks uniformly in MIN..MAX (e.g. 1:20) instead of the fixed --tasks.")
@click.option("--shots-range", default=None, metavar="MIN:MAX",
              help="Sample each task's training shots uniformly in MIN..MAX (e.g. 1:10), uneven within a stream.")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Class-level augmentation of the meta-train images (flips as new classes, affine, stroke width).")
@click.option("--noise", type=AMOUNT, default=0.0, show_default=True, help="Gaussian input-noise std during training.")
@click.option("--steps", type=COUNT, default=2000, show_default=True)
@click.option("--batch-size", type=COUNT, default=16, show_default=True, help="Episodes per step (per process).")
@click.option("--lr", type=RATE, default=1e-4, show_default=True)
@click.option("--lr-halve-every", type=COUNT, default=10000, show_default=True)
@click.option("--warmup", type=NON_NEGATIVE, default=100, show_default=True, help="Linear learning-rate warm-up steps.")
@click.option("--slct-lambda", type=AMOUNT, default=0.1, show_default=True, help="Selectivity regularisation weight (0 = off).")
@click.option("--objective", type=click.Choice(["anytime", "end"]), default="anytime", show_default=True,
              help="anytime: each query sees the stream up to a random task boundary at or after its task; "
                   "end: every query sees the whole stream.")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--checkpoint-every", type=COUNT, default=500, show_default=True)
@click.option("--log-every", type=COUNT, default=25, show_default=True)
@click.option("-o", "--out", default=None,
              help="Checkpoint path [a new folder runs/<model>-<dataset>-<date-time>/model.pt].")
@force_option
@click.option("--resume", is_flag=True, help="Continue from the checkpoint at -o (which must be given).")
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
def train(**kw: Any) -> None:
    """Meta-train a learner on the meta-train split."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from dataclasses import asdict

    from mclstudio.data import parse_range
    from mclstudio.training.trainer import TrainConfig, TrainLog
    from mclstudio.training.trainer import train as run_training

    from mclstudio.files import claim_output, new_run_path
    from mclstudio.training.interrupt import TrainingInterrupted, stop_on_signals

    learner = _learner_overrides(**{k: kw.pop(k) for k in list(kw) if k in (
        "d_model", "layers", "d_state", "heads", "d_ff", "features", "y_vocab", "encoder_channels", "dropout")})
    if kw["resume"] and not kw["out"]:
        raise ValueError("--resume needs -o, the checkpoint to continue from (e.g. -o runs/<run>/model.pt)")
    out = kw["out"] or str(new_run_path(f"{kw['model']}-{kw['dataset']}", "model.pt"))
    cfg = TrainConfig(
        model=kw["model"], dataset=kw["dataset"], root=kw["root"], download=kw["download"], tasks=kw["tasks"],
        train_shots=kw["shots"], test_shots=kw["test_shots"], noise_std=kw["noise"], steps=kw["steps"],
        batch_size=kw["batch_size"], lr=kw["lr"], lr_halve_every=kw["lr_halve_every"], warmup_steps=kw["warmup"],
        slct_lambda=kw["slct_lambda"], objective=kw["objective"], seed=kw["seed"], device=kw["device"], amp=kw["amp"],
        checkpoint_every=kw["checkpoint_every"], log_every=kw["log_every"],
        out=out, resume=kw["resume"], max_minutes=kw["max_minutes"], pretrain_steps=kw["pretrain_steps"],
        frozen_encoder_steps=kw["frozen_encoder_steps"], learner=learner, augment=kw["augment"],
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

    with claim, stop_on_signals(_stopping_message):
        log_file = open(kw["log_file"], "a") if kw["log_file"] else None  # noqa: SIM115 (closed below)
        try:
            with progress:
                final = run_training(cfg, on_log, on_pretrain_log)
        except TrainingInterrupted as stop:
            _interrupted(stop, "checkpoint")
        finally:
            if log_file is not None:
                log_file.close()
    click.echo(f"saved {cfg.out} after {final.get('step', cfg.steps)} steps: " + ", ".join(
        f"{k} {v:.4g}" for k, v in final.items() if k in ("loss", "accuracy", "episodes_per_s")))


@cli.command(name="eval")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--episodes", type=COUNT, default=512, show_default=True, help="Meta-test episodes per setting (--grid: per cell).")
@click.option("--batch-size", type=COUNT, default=64, show_default=True)
@click.option("--noise", "noise_levels", multiple=True, type=AMOUNT, help="Input-noise stds [0.5, 1.0].")
@click.option("--domain", "domains", multiple=True, help="Another dataset to meta-test on (repeatable).")
@click.option("--root", default=None, help="Folder for torchvision datasets.")
@click.option("--download", is_flag=True)
@click.option("--device", default="auto", show_default=True)
@precision_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--grid", is_flag=True, help="Accuracy over a tasks x shots grid and the anytime curve (several CKPTs allowed).")
@click.option("--grid-tasks", default="5,10,20,40,100", show_default=True, help="The grid's task counts.")
@click.option("--grid-shots", default="1,2,5,10", show_default=True, help="The grid's training shots per task.")
@click.option("--anytime", default="20x5", show_default=True, metavar="TxS",
              help="Stream shape of the anytime curve (accuracy on the tasks seen after each task).")
@adapter_option
def eval_command(checkpoints: tuple[str, ...], episodes: int, batch_size: int, noise_levels: tuple[float, ...],
                 domains: tuple[str, ...], root: str | None, download: bool, device: str, precision: str,
                 as_json: bool, grid: bool, grid_tasks: str, grid_shots: str, anytime: str,
                 adapters: tuple[str, ...]) -> None:
    """Meta-test a checkpoint: trained setting, longer streams, more shots, noise, other domains; or,
    with --grid, a tasks x shots grid and the anytime curve of one or more checkpoints."""
    from mclstudio.precision import check_precision
    from mclstudio.training.adapters import load_learners
    from mclstudio.training.evaluate import evaluate_checkpoint
    from mclstudio.training.trainer import resolve_device

    check_precision(precision, resolve_device(device))
    if grid:
        _eval_grid(checkpoints, adapters, episodes, batch_size, device, precision, as_json, grid_tasks, grid_shots,
                   anytime, root, download)
        return
    if len(checkpoints) > 1:
        raise ValueError("several checkpoints need --grid; give one checkpoint for the standard settings")
    [ckpt] = load_learners(checkpoints, adapters, device=resolve_device(device))
    results = evaluate_checkpoint(
        ckpt.learner, ckpt.metadata, episodes=episodes, batch_size=batch_size,
        noise_levels=noise_levels or (0.5, 1.0), domains=domains, root=root, download=download, precision=precision,
    )
    summary = {
        "checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "model": ckpt.learner.config.model,
        "adapter": str(ckpt.adapter_path or ""), "adapter_sha256": ckpt.adapter_sha256 or "",
        "parameters": ckpt.learner.num_parameters(), "device": str(next(ckpt.learner.parameters()).device),
        "precision": precision, "results": [r.to_dict() for r in results],
    }
    if as_json:
        click.echo(strict_json(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    adapted = f" + adapter {ckpt.adapter_path.name}" if ckpt.adapter_path else ""
    table = Table(title=f"{ckpt.path.name}{adapted}: {summary['model']}, {summary['parameters']:,} parameters, {precision}")
    for col in ("setting", "dataset", "tasks", "shots", "noise", "episodes", "score", "95% CI", "ep/s"):
        table.add_column(col, justify="left" if col in ("setting", "dataset") else "right")
    for r in results:
        if r.skipped:
            table.add_row(r.name, r.dataset, str(r.tasks), str(r.train_shots), f"{r.noise_std:g}", "-",
                          "skipped", clip(r.skipped, 60), "-")
            continue
        score = f"{100 * r.mean:.1f}%" if r.metric == "accuracy" else f"{r.mean:.4f} mse"
        ci = f"±{100 * r.ci95:.1f}" if r.metric == "accuracy" else f"±{r.ci95:.4f}"
        table.add_row(r.name, r.dataset, str(r.tasks), str(r.train_shots), f"{r.noise_std:g}", str(r.episodes),
                      score, ci, f"{r.episodes_per_s:.0f}")
    Console().print(table)


def _eval_grid(checkpoints: tuple[str, ...], adapters: tuple[str, ...], episodes: int, batch_size: int, device: str,
               precision: str, as_json: bool, grid_tasks: str, grid_shots: str, anytime: str, root: str | None,
               download: bool) -> None:
    """`eval --grid`: one table, heatmap and anytime curve per checkpoint, or one JSON document."""
    from mclstudio.cli.grid_report import grid_json, parse_int_list, parse_shape, render_grid
    from mclstudio.training.adapters import load_learners
    from mclstudio.training.evaluate import evaluate_grid
    from mclstudio.training.trainer import resolve_device

    tasks, shots = parse_int_list(grid_tasks, "--grid-tasks"), parse_int_list(grid_shots, "--grid-shots")
    shape = parse_shape(anytime, "--anytime")
    loaded = load_learners(checkpoints, adapters, device=resolve_device(device))
    reports, rendered = [], []
    for ckpt in loaded:
        cells, curve = evaluate_grid(ckpt.learner, ckpt.metadata, tasks, shots, shape, episodes, batch_size, precision,
                                     root, download)
        reports.append({
            "checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "model": ckpt.learner.config.model,
            "adapter": str(ckpt.adapter_path or ""), "parameters": ckpt.learner.num_parameters(),
            "device": str(next(ckpt.learner.parameters()).device), "precision": precision,
            "grid_tasks": list(tasks), "grid_shots": list(shots),
            "cells": [c.to_dict() for c in cells], "anytime": curve.to_dict(),
        })
        adapted = f" + adapter {ckpt.adapter_path.name}" if ckpt.adapter_path else ""
        rendered += render_grid(f"{ckpt.path.name}{adapted} ({ckpt.learner.config.model})", tasks, shots, cells, curve)
    if as_json:
        click.echo(grid_json(reports))
        return
    from rich.console import Console

    console = Console()
    for item in rendered:
        console.print(item)


@cli.command()
@click.argument("checkpoint")
def info(checkpoint: str) -> None:
    """Show a checkpoint's learner config and metadata."""
    from mclstudio.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    click.echo(strict_json({"checkpoint": str(ckpt.path), "sha256": ckpt.sha256,
                            "parameters": ckpt.learner.num_parameters(),
                            "config": ckpt.learner.config.to_dict(), "metadata": ckpt.metadata}, indent=2, default=str))


@cli.command()
@click.argument("checkpoint")
@click.option("--dataset", required=True,
              help="The new domain, e.g. omniglot-mini:inverted, omniglot-mini:noisy or torchvision:<Name>.")
@click.option("--rank", type=COUNT, default=4, show_default=True, help="Rank r of every adapter.")
@click.option("--alpha", type=RATE, default=8.0, show_default=True, help="Adapter scale numerator: W + alpha/r * B A.")
@click.option("--ssm", is_flag=True, help="Also adapt dt_proj, the SSM's step-size projection (Mamba-like learners).")
@click.option("--encoder", is_flag=True, help="Also adapt the image encoder's final projection (slower: runs the CNN).")
@click.option("--tasks", type=NON_NEGATIVE, default=0, show_default=True, help="Tasks per episode (0: the base's trained setting).")
@click.option("--shots", type=NON_NEGATIVE, default=0, show_default=True, help="Training shots per task (0: the base's).")
@click.option("--test-shots", type=NON_NEGATIVE, default=0, show_default=True, help="Query shots per task (0: the base's).")
@click.option("--steps", type=COUNT, default=300, show_default=True)
@click.option("--batch-size", type=COUNT, default=16, show_default=True, help="Episodes per step.")
@click.option("--lr", type=RATE, default=1e-3, show_default=True)
@click.option("--warmup", type=NON_NEGATIVE, default=20, show_default=True, help="Linear learning-rate warm-up steps.")
@click.option("--slct-lambda", type=AMOUNT, default=0.0, show_default=True,
              help="Selectivity regularisation weight (costs a second pass's worth of time on Mamba).")
@click.option("--seed", type=NON_NEGATIVE, default=1, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--log-every", type=COUNT, default=25, show_default=True)
@click.option("--root", default=None, help="Folder of a torchvision dataset.")
@click.option("--download", is_flag=True, help="Let torchvision download the dataset into --root.")
@click.option("-o", "--out", default=None,
              help="Adapter file [a new folder runs/<name>-<dataset>-r<rank>-<date-time>/adapter.pt].")
@force_option
@click.option("--resume", is_flag=True, help="Continue the interrupted run whose adapter file is -o (which must be given).")
def adapt(checkpoint: str, **kw: Any) -> None:
    """Meta-train low-rank adapters on a frozen checkpoint for a new domain; save a small adapter file."""
    from mclstudio.files import claim_output, new_run_path
    from mclstudio.training.adapt import AdaptConfig
    from mclstudio.training.adapt import adapt as run_adapt
    from mclstudio.training.interrupt import TrainingInterrupted, stop_on_signals

    if kw["resume"] and not kw["out"]:
        raise ValueError("--resume needs -o, the interrupted adapter file to continue from")
    if kw["resume"] and not Path(kw["out"]).exists():
        raise ValueError(f"cannot resume: {kw['out']} does not exist")
    out = kw["out"] or str(new_run_path(f"{Path(checkpoint).stem}-{kw['dataset']}-r{kw['rank']}", "adapter.pt"))
    cfg = AdaptConfig(
        checkpoint=checkpoint, dataset=kw["dataset"], rank=kw["rank"], alpha=kw["alpha"], ssm=kw["ssm"],
        encoder=kw["encoder"], tasks=kw["tasks"], train_shots=kw["shots"], test_shots=kw["test_shots"],
        steps=kw["steps"], batch_size=kw["batch_size"], lr=kw["lr"], warmup_steps=kw["warmup"],
        slct_lambda=kw["slct_lambda"], seed=kw["seed"], device=kw["device"], log_every=kw["log_every"],
        root=kw["root"], download=kw["download"], out=out, resume=kw["resume"],
    )
    cfg.validate()
    base_bytes = Path(checkpoint).stat().st_size if Path(checkpoint).is_file() else 0  # an adapter is smaller

    def on_log(log: Any) -> None:
        click.echo(f"step {log.step}/{log.steps} loss {log.loss:.3f} acc {log.accuracy:.3f} "
                   f"{log.episodes_per_s:.1f} ep/s", err=True)

    with claim_output(out, replace=kw["force"] or kw["resume"], inputs=[checkpoint], estimate_bytes=2 * base_bytes,
                      what="adapter file", hint="pass --force to replace it"), stop_on_signals(_stopping_message):
        try:
            result = run_adapt(cfg, on_log)
        except TrainingInterrupted as stop:
            _interrupted(stop, "adapter file")
    click.echo(f"saved {result['out']} ({result['bytes']:,} bytes): {result['trainable_parameters']:,} trainable "
               f"parameters in {result['targets']} adapters on a frozen base of {result['base_parameters']:,}")


def _add_recording_commands() -> None:
    """record and replay live in their own module (mclstudio.cli.recording_commands)."""
    from mclstudio.cli.recording_commands import record, replay

    cli.add_command(record)
    cli.add_command(replay)


_add_recording_commands()


@cli.command(name="open")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--dataset", default="omniglot-mini", show_default=True, help="The picker's default dataset (domain).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--tasks", type=COUNT, default=20, show_default=True)
@click.option("--shots", default="5", show_default=True, help="Training shots per task, or one per task: 1,3,5,...")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True)
@click.option("--noise", type=AMOUNT, default=0.0, show_default=True, help="Gaussian input-noise std.")
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when there is one), cpu or cuda[:N].")
@click.option("--record-dir", default=".", show_default=True, help="Where r (record) and exports write.")
@click.option("--play", is_flag=True, help="Skip the picker and start playing the default episode.")
@precision_option
@adapter_option
def open_command(checkpoints: tuple[str, ...], dataset: str, split: str, tasks: int, shots: str, seed: int,
                 noise: float, device: str, record_dir: str, play: bool, precision: str, adapters: tuple[str, ...]) -> None:
    """Open the live studio (a Textual app) on one or more checkpoints."""
    from mclstudio.files import check_output

    # r (record) and exports write new files there: the folder must exist and be writable.
    if not Path(record_dir).is_dir():
        raise ValueError(f"--record-dir {record_dir} is not a folder")
    check_output(Path(record_dir) / ".mclstudio-write-check", replace=True, what="recording")

    from mclstudio.tui.cli import open_studio

    open_studio(checkpoints, dataset=dataset, split=split, tasks=tasks, shots=shots, seed=seed, noise=noise,
                device=device, record_dir=record_dir, play=play, precision=precision, adapters=adapters)


def _one_line_usage_error(exc: click.UsageError, argv: list[str]) -> str:
    """click's usage block (usage line, hint, message) as one line that points to the command's --help."""
    if exc.ctx is not None:
        command = exc.ctx.command_path
    else:
        named = [a for a in argv if a in cli.commands]
        command = f"mclstudio {named[0]}" if named else "mclstudio"
    message = " ".join(exc.format_message().split())
    if isinstance(exc, click.BadParameter) and exc.param is not None and exc.message.startswith("must "):
        name = max(exc.param.opts, key=len) if exc.param.opts else str(exc.param.name)  # --batch-size over -b
        message = f"{name} {exc.message}"  # "--steps must be at least 1, not 0"
    return f"error: {message} (see {command} --help)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning known errors (usage errors included) into one line and exit
    code 2. SIGTERM stops a command as Ctrl-C does (train and adapt save a resumable file first)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _ARGV[:] = args
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread else None
    try:
        _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: list[str]) -> None:
    try:
        cli.main(args=args, prog_name="mclstudio", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # plain `mclstudio`: the help, as usual
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # a bad option value, an unknown option, a missing argument
        click.echo(_one_line_usage_error(exc, args), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except USER_ERRORS as exc:
        if os.environ.get("MCLSTUDIO_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        click.echo(f"error: {message}", err=True)
        sys.exit(2)
    except Exception as exc:  # a bug: still one line, with a way to see more
        if os.environ.get("MCLSTUDIO_DEBUG"):
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {clip(str(exc), 200)} "
                   "(set MCLSTUDIO_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
