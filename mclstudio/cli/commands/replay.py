"""`mclstudio replay`: summarise a recording (table, plot, JSON, CSV), verify it, re-run it with others."""

from __future__ import annotations

import csv
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from mclstudio.cli.options import force_option
from mclstudio.files import atomic_target
from mclstudio.formatting import format_bytes, strict_json


@click.command(name="replay")
@click.argument("recording")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (no table, no plot).")
@click.option("--csv", "csv_path", default=None, help="Write accuracy by tasks learned, per learner and episode, to a CSV.")
@click.option("--verify", "do_verify", is_flag=True,
              help="Re-run the episodes through the recorded checkpoints and check every prediction.")
@click.option("--with", "others", multiple=True, help="Re-run the episodes through another checkpoint (repeatable).")
@click.option("--adapter", "adapters", multiple=True, metavar="FILE",
              help="An adapter file to apply on top of the --with checkpoint it was trained on (repeatable).")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Terminal plot of accuracy against tasks learned.")
@click.option("--tui", is_flag=True, help="Open the recording in the studio app (no models) instead.")
@force_option
def replay_command(recording: str, as_json: bool, csv_path: str | None, do_verify: bool, others: tuple[str, ...],
                   adapters: tuple[str, ...], plot: bool, tui: bool, force: bool) -> None:
    """Summarise a recording: accuracy, forgetting, state size and step latency per learner."""
    from mclstudio.files import claim_output

    if adapters and not others:
        raise ValueError("--adapter applies to the checkpoints given with --with; give one")
    claim = claim_output(csv_path, replace=force, inputs=[recording, *others, *adapters],
                         what="CSV file") if csv_path else nullcontext()
    with claim:
        _replay(recording, as_json, csv_path, do_verify, others, adapters, plot, tui)


def _replay(recording: str, as_json: bool, csv_path: str | None, do_verify: bool, others: tuple[str, ...],
            adapters: tuple[str, ...], plot: bool, tui: bool) -> None:
    if tui:
        from mclstudio.tui.cli import replay_studio

        replay_studio(recording)
        return
    from mclstudio.recording.hdf5 import read_recording
    from mclstudio.recording.session import recording_summary, rerun_with, summarize, verify
    from mclstudio.store.adapters import load_learners

    rec = read_recording(recording)
    rows = recording_summary(rec)
    traces_by_learner = {ident.name: [ep.traces[ident.name] for ep in rec.episodes] for ident in rec.learners}
    for name, traces, source in rerun_with(rec, load_learners(others, adapters), list(traces_by_learner)):
        traces_by_learner[name] = traces
        rows.append(summarize(name, traces, source))

    report = verify(rec) if do_verify else None
    if csv_path:
        _write_csv(Path(csv_path), traces_by_learner, [ep.index for ep in rec.episodes])

    if as_json:
        out: dict[str, Any] = {"recording": str(rec.path), "schema_version": rec.schema_version,
                               "precision": rec.engine_config.precision, "episodes": len(rec.episodes), "incomplete_episodes": rec.incomplete,
                               "learners": rows}
        if report is not None:
            out["verify"] = {"ok": report.ok, "checked": report.checked, "mismatches": report.mismatches}
        click.echo(strict_json(out, indent=2))
    else:
        _print_table(rec, rows)
        if plot:
            click.echo(_plot(rows))
        if report is not None:
            if report.ok:
                click.echo(f"verify: OK, {report.checked} recorded predictions reproduced exactly "
                           f"at {rec.engine_config.precision}")
            else:
                click.echo(f"verify: {len(report.mismatches)} mismatch(es)", err=True)
                for m in report.mismatches:
                    click.echo(f"  {m}", err=True)
    if csv_path and not as_json:
        click.echo(f"wrote {csv_path}")
    if report is not None and not report.ok:
        sys.exit(1)  # a mismatch is a result, not an error: exit 1 (errors exit 2)


def _write_csv(path: Path, traces_by_learner: dict[str, list[Any]], episodes: list[int]) -> None:
    """The rows of recording.session.replay_csv_rows, written atomically."""
    from mclstudio.recording.session import REPLAY_CSV_HEADER, replay_csv_rows

    with atomic_target(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REPLAY_CSV_HEADER)
        w.writerows(replay_csv_rows(traces_by_learner, episodes))


def _print_table(rec: Any, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    skipped = f", {rec.incomplete} incomplete skipped" if rec.incomplete else ""
    table = Table(title=f"{rec.path.name}: {len(rec.episodes)} episodes at {rec.engine_config.precision}{skipped}")
    for col in ("learner", "source", "acc", "95% CI", "forget", "state first", "state final", "step"):
        table.add_column(col, justify="left" if col in ("learner", "source") else "right", no_wrap=True)
    for r in rows:
        ci = "-" if math.isnan(r["accuracy_ci95"]) else f"±{100 * r['accuracy_ci95']:.1f}"
        table.add_row(r["learner"], r["source"], f"{100 * r['accuracy']:.1f}%", ci, f"{100 * r['forgetting']:.1f}%",
                      format_bytes(r["first_state_bytes"]), format_bytes(r["final_state_bytes"]), f"{r['step_latency_ms']:.2f} ms")
    Console(width=max(100, Console().width)).print(table)


PLOT_MARKERS = "●▲■◆✚x*o"  # one per learner, so that the lines and the legend read without colours too


def _plot(rows: list[dict[str, Any]]) -> str:
    """Accuracy on the tasks seen against tasks learned, one line per learner, as terminal text, with a
    legend (marker and colour per learner) in the plot and a line under it."""
    import plotext as plt

    fig = plt.figure
    fig.clear()
    fig.plot_size(80, 20)
    fig.title("accuracy on tasks seen vs tasks learned")
    fig.label("tasks learned", axis=0)
    fig.ruler(axis=1).lim(0, 1)
    longest = max((len(r["accuracy_by_tasks_learned"]) for r in rows), default=0)
    if longest:
        fig.ruler(axis=0).ticks(list(range(1, longest + 1, max(1, longest // 10))))
    legend = []
    for n, r in enumerate(rows):
        curve = r["accuracy_by_tasks_learned"]
        points = [(k + 1, v) for k, v in enumerate(curve) if v is not None]
        if not points:
            continue
        marker = PLOT_MARKERS[n % len(PLOT_MARKERS)]
        s = fig.signal([p[0] for p in points], [p[1] for p in points], marker=marker)
        s.label(r["learner"])
        s.lines()
        fig.draw(s)
        legend.append(f"{marker} {r['learner']}")
    plot = fig.build().string(colorless=not sys.stdout.isatty())
    return f"{plot}\nlegend: {'   '.join(legend)}" if legend else plot
