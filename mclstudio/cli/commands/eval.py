"""`mclstudio eval`: meta-test accuracy in the standard settings, or over a tasks x shots grid."""

from __future__ import annotations

import click

from mclstudio.cli.options import AMOUNT, COUNT, adapter_option, device_and_precision_options, torchvision_options
from mclstudio.formatting import clip, strict_json


@click.command(name="eval")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--episodes", type=COUNT, default=512, show_default=True, help="Meta-test episodes per setting (--grid: per cell).")
@click.option("--batch-size", type=COUNT, default=64, show_default=True)
@click.option("--noise", "noise_levels", multiple=True, type=AMOUNT, help="Input-noise stds [0.5, 1.0].")
@click.option("--domain", "domains", multiple=True, help="Another dataset to meta-test on (repeatable).")
@torchvision_options
@device_and_precision_options
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
    from mclstudio.store.adapters import load_learners
    from mclstudio.training.evaluate import evaluate_checkpoint
    from mclstudio.store.device import resolve_device

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
    from mclstudio.store.adapters import load_learners
    from mclstudio.training.evaluate import evaluate_grid
    from mclstudio.store.device import resolve_device

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

