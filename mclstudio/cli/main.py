"""The `mclstudio` command line: the command group, and the entry point that turns errors into one line.

The commands live one a module in mclstudio.cli.commands (after accelerate's commands/ layout), with
the option groups they share in mclstudio.cli.options. Nothing imported here loads torch: each command
imports the modules that do when it runs, so `mclstudio --help` starts fast.

Every command answers bad input with one line on stderr and a non-zero exit, never a traceback
(set MCLSTUDIO_DEBUG=1 to see one).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from mclstudio import __version__
from mclstudio.cli.commands.adapt import adapt_command
from mclstudio.cli.commands.eval import eval_command
from mclstudio.cli.commands.info import info_command
from mclstudio.cli.commands.open import open_command
from mclstudio.cli.commands.record import record_command
from mclstudio.cli.commands.replay import replay_command
from mclstudio.cli.commands.train import train_command
from mclstudio.cli.interrupt import COMMAND_LINE
from mclstudio.errors import USER_ERRORS
from mclstudio.formatting import clip


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mclstudio")
def cli() -> None:
    """mclstudio: meta-continual learners (Mamba, Transformer, Linear Transformer, Performer) that learn
    in context, in the terminal."""


# One module per command (mclstudio.cli.commands); each imports its heavy modules only when it runs.
for _command in (train_command, eval_command, info_command, adapt_command, record_command, replay_command,
                 open_command):
    cli.add_command(_command)


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
    COMMAND_LINE[:] = args
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
