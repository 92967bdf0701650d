"""`mclstudio adapt`: low-rank adapters on a frozen checkpoint for a new domain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mclstudio.cli.interrupt import exit_interrupted, stopping_message
from mclstudio.cli.options import (
    AMOUNT, COUNT, NON_NEGATIVE, RATE, device_option, output_options, resume_option, torchvision_options,
    train_precision_option,
)


@click.command(name="adapt")
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
@device_option
@train_precision_option
@click.option("--log-every", type=COUNT, default=25, show_default=True)
@torchvision_options
@output_options("Adapter file [a new folder runs/<name>-<dataset>-r<rank>-<date-time>/adapter.pt].", None,
                resume_option("Continue the interrupted run whose adapter file is -o (which must be given)."))
def adapt_command(checkpoint: str, **kw: Any) -> None:
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
        slct_lambda=kw["slct_lambda"], seed=kw["seed"], device=kw["device"], precision=kw["precision"], log_every=kw["log_every"],
        root=kw["root"], download=kw["download"], out=out, resume=kw["resume"],
    )
    cfg.validate()
    base_bytes = Path(checkpoint).stat().st_size if Path(checkpoint).is_file() else 0  # an adapter is smaller

    def on_log(log: Any) -> None:
        click.echo(f"step {log.step}/{log.steps} loss {log.loss:.3f} acc {log.accuracy:.3f} "
                   f"{log.episodes_per_s:.1f} ep/s", err=True)

    with claim_output(out, replace=kw["force"] or kw["resume"], inputs=[checkpoint], estimate_bytes=2 * base_bytes,
                      what="adapter file", hint="pass --force to replace it"), stop_on_signals(stopping_message):
        try:
            result = run_adapt(cfg, on_log)
        except TrainingInterrupted as stop:
            exit_interrupted(stop, "adapter file")
    click.echo(f"saved {result['out']} ({result['bytes']:,} bytes): {result['trainable_parameters']:,} trainable "
               f"parameters in {result['targets']} adapters on a frozen base of {result['base_parameters']:,}")

