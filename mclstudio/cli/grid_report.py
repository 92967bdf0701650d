"""`mclstudio eval --grid`: accuracy over a tasks x shots grid and the anytime curve, for one or more
checkpoints, as rich tables with a terminal heatmap, or as one strict JSON document (no NaN)."""

from __future__ import annotations

import json
import math
from typing import Any

from mclstudio.training.evaluate import AnytimeCurve, SettingResult


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """"5,10,20" -> (5, 10, 20): positive whole numbers, no repeats; a ValueError names ``option``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be positive whole numbers separated by commas (e.g. 5,10,20), not {text!r}") from None
    if min(values) < 1 or len(set(values)) != len(values):
        raise ValueError(f"{option} must be distinct positive whole numbers, not {text!r}")
    return values


def parse_shape(text: str, option: str) -> tuple[int, int]:
    """"20x5" -> (20, 5)."""
    parts = text.lower().split("x")
    try:
        tasks, shots = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{option} must be TASKSxSHOTS (e.g. 20x5), not {text!r}") from None
    if tasks < 1 or shots < 1:
        raise ValueError(f"{option} must be TASKSxSHOTS with both at least 1, not {text!r}")
    return tasks, shots


def strict(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def grid_json(reports: list[dict[str, Any]]) -> str:
    """One JSON document for all checkpoints; each report holds "cells" and "anytime" as dicts."""
    return json.dumps(strict({"checkpoints": reports}), indent=2, allow_nan=False)


def _score(r: SettingResult) -> str:
    if r.skipped:
        return "-"
    if r.metric == "accuracy":
        return f"{100 * r.mean:.1f} ±{100 * r.ci95:.1f}" if math.isfinite(r.ci95) else f"{100 * r.mean:.1f}"
    return f"{r.mean:.4f} ±{r.ci95:.4f}" if math.isfinite(r.ci95) else f"{r.mean:.4f}"


def _heat_style(accuracy: float) -> str:
    """Red (0) through yellow to green (1), as a rich background style."""
    a = min(max(accuracy, 0.0), 1.0)
    red, green = (255, int(510 * a)) if a < 0.5 else (int(510 * (1 - a)), 255)
    return f"black on rgb({red},{green},60)"


def render_grid(title: str, tasks: tuple[int, ...], shots: tuple[int, ...], cells: list[SettingResult],
                curve: AnytimeCurve) -> list[Any]:
    """Rich renderables: the accuracy table (mean ± 95% CI), its heatmap and the anytime curve."""
    from rich.table import Table
    from rich.text import Text

    by_shape = {(r.tasks, r.train_shots): r for r in cells}
    accuracy = all(r.metric == "accuracy" for r in cells)
    unit = "accuracy %, ± 95% CI" if accuracy else "MSE ± 95% CI"
    table = Table(title=f"{title}: {unit}, {cells[0].episodes or '-'} episodes a cell")
    heat = Table(title="heatmap (tasks down, shots across)", show_lines=False, padding=(0, 1))
    table.add_column("tasks \\ shots", justify="right")
    heat.add_column("", justify="right")
    for s in shots:
        table.add_column(str(s), justify="right")
        heat.add_column(str(s), justify="center")
    skipped: list[str] = []
    for t in tasks:
        row, heat_row = [str(t)], [str(t)]
        for s in shots:
            r = by_shape[(t, s)]
            row.append(_score(r))
            if r.skipped:
                skipped.append(f"{t}x{s}: {r.skipped}")
                heat_row.append(Text("  -  "))
            elif accuracy:
                heat_row.append(Text(f" {100 * r.mean:3.0f} ", style=_heat_style(r.mean)))
            else:
                heat_row.append(Text(f"{r.mean:.3f}"))
        table.add_row(*row)
        heat.add_row(*heat_row)
    out: list[Any] = [table, heat]
    out += [Text(f"skipped {line}", style="dim") for line in skipped]
    if curve.skipped:
        out.append(Text(f"anytime curve {curve.tasks}x{curve.shots} skipped: {curve.skipped}", style="dim"))
    else:
        anytime = Table(title=f"anytime: accuracy % on the tasks seen after each task, {curve.tasks} tasks x "
                              f"{curve.shots} shots, {curve.episodes} episodes")
        anytime.add_column("after task", justify="right")
        anytime.add_column("accuracy", justify="right")
        anytime.add_column("95% CI", justify="right")
        anytime.add_column("", justify="left")
        for k, (m, c) in enumerate(zip(curve.mean, curve.ci95)):
            ci = f"±{100 * c:.1f}" if math.isfinite(c) else "-"
            anytime.add_row(str(k + 1), f"{100 * m:.1f}", ci, Text("█" * round(30 * m), style=_heat_style(m).split()[-1]))
        out.append(anytime)
    return out
