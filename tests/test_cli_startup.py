"""The command line starts without torch: `import mclstudio.cli.main` and `mclstudio --help` load no torch
or numpy (each checked in a fresh interpreter), and the torch-free names and error types the CLI uses
are the ones the heavy modules use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mclstudio.choices import EVAL_MODES, LEARNER_NAMES, PRECISIONS, ROWS_MODES
from mclstudio.errors import USER_ERRORS, AdapterError, CheckpointError, DataError, OutputError, RecordingError

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["adapt", "eval", "info", "open", "record", "replay", "train"]

# Prints the heavy top-level packages loaded, then every mclstudio module loaded, one line each.
PROBE = """
import json, sys
{code}
loaded = sorted(sys.modules)
print(json.dumps(sorted({{m.split(".")[0] for m in loaded}} & {{"torch", "numpy"}})))
print(json.dumps([m for m in loaded if m.startswith("mclstudio")]))
"""


def loaded_after(code: str) -> tuple[list[str], list[str]]:
    """(torch/numpy packages, mclstudio modules) in sys.modules after running ``code`` in a fresh
    interpreter that imports this checkout."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr
    heavy, mclstudio_modules = result.stdout.strip().splitlines()[-2:]
    return json.loads(heavy), json.loads(mclstudio_modules)


def test_import_cli_main_loads_no_torch_or_numpy():
    heavy, modules = loaded_after("import mclstudio.cli.main")
    assert heavy == []
    # ... while every command module was imported (registered), so the check covers them all.
    assert {f"mclstudio.cli.commands.{c}" for c in COMMANDS} <= set(modules)


def test_help_loads_no_torch_or_numpy_and_lists_every_command():
    heavy, _ = loaded_after("""
import contextlib, io
from mclstudio.cli.main import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["--help"])
    except SystemExit as exit:
        assert exit.code == 0, exit.code
commands = out.getvalue().split("Commands:")[1].split()
assert all(c in commands for c in %r), out.getvalue()
""" % COMMANDS)
    assert heavy == []


def test_a_command_still_imports_what_it_runs(tmp_path):
    """The probe can see torch: `info` on a real checkpoint loads it (the lazy imports happen)."""
    heavy, modules = loaded_after(f"""
import contextlib, io
from mclstudio.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["info", {str(ROOT / "checkpoints" / "mamba.pt")!r}])
""")
    assert heavy == ["numpy", "torch"]
    assert "mclstudio.store.checkpoint" in modules


def test_the_names_the_cli_offers_are_the_implemented_ones():
    from mclstudio.engine.stream import EngineConfig
    from mclstudio.learners.registry import LEARNERS
    from mclstudio.precision import DTYPES

    assert tuple(LEARNERS) == LEARNER_NAMES
    assert tuple(DTYPES) == PRECISIONS
    for mode in EVAL_MODES:
        EngineConfig(eval_every=mode).validate(num_queries=1)
    for mode in ROWS_MODES:
        EngineConfig(rows_every=mode).validate(num_queries=1)
    with pytest.raises(ValueError, match="eval_every"):
        EngineConfig(eval_every="episode").validate(num_queries=1)


def test_the_cli_catches_the_error_types_the_layers_raise():
    """Each layer raises the class from mclstudio.errors (not a copy the CLI would not catch)."""
    from mclstudio.data.episodes import DataError as data_error
    from mclstudio.files import OutputError as output_error
    from mclstudio.recording.hdf5 import RecordingError as recording_error
    from mclstudio.store.adapters import AdapterError as adapter_error
    from mclstudio.store.checkpoint import CheckpointError as checkpoint_error

    assert (data_error, output_error, recording_error, adapter_error, checkpoint_error) == (
        DataError, OutputError, RecordingError, AdapterError, CheckpointError)
    for error in (DataError, OutputError, RecordingError, AdapterError, CheckpointError):
        assert issubclass(error, USER_ERRORS)
