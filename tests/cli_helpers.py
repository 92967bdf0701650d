"""Shared by the command-line tests: run ``mclstudio`` in-process and check a refusal's one error line."""

from __future__ import annotations

from mclstudio.cli.main import main


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    """``mclstudio *args`` through main(): (exit code, stdout, stderr); 0 when main returns."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *needles: str, exit_code: int | None = None) -> str:
    """Assert a refusal: a non-zero exit (``exit_code`` exactly, if given), stderr one line starting
    "error: " (no traceback) and holding every needle. Returns that line."""
    lines = err.strip().splitlines()
    assert code != 0 and code == (exit_code if exit_code is not None else code), (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
