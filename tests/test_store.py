"""The model store (mclstudio.store): device names, a learner's device, the one writer of checkpoint and
adapter files, and the one-line error helper; and that loading a model imports nothing from training."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mclstudio.formatting import error_line
from mclstudio.store.checkpoint import write_payload
from mclstudio.store.device import learner_device, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"^unknown device 'gpu0'; use auto, cpu or cuda\[:N\]$"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
    else:
        with pytest.raises(ValueError, match=r"^device 'cuda:0' asked for, but no CUDA GPU is available$"):
            resolve_device("cuda:0")


def test_learner_device_is_where_the_parameters_are():
    assert learner_device(torch.nn.Linear(2, 3)) == torch.device("cpu")
    assert learner_device(torch.nn.Linear(2, 3, device="meta")) == torch.device("meta")  # no GPU needed


def test_error_line_is_the_first_line_or_the_type_name():
    assert error_line(ValueError("  bad value\nsecond line\n")) == "bad value"
    assert error_line(RuntimeError("")) == "RuntimeError"
    assert error_line(KeyError()) == "KeyError"
    assert error_line(OSError("\n\n disk full \n")) == "disk full"


def test_write_payload_moves_the_training_state_to_the_cpu_and_makes_the_folder(tmp_path):
    path = tmp_path / "new" / "folder" / "file.pt"
    state = {"step": 3, "optimizer": {"exp_avg": [torch.ones(2, requires_grad=True)]}}
    write_payload(path, {"format": "x", "weights": torch.arange(3)}, state)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "x" and torch.equal(raw["weights"], torch.arange(3))
    assert raw["training_state"]["step"] == 3
    saved = raw["training_state"]["optimizer"]["exp_avg"][0]
    assert torch.equal(saved, torch.ones(2)) and not saved.requires_grad  # detached
    assert os.listdir(path.parent) == ["file.pt"]  # no temporary file left


def test_a_failed_write_leaves_the_file_there_unchanged(tmp_path):
    path = tmp_path / "model.pt"
    write_payload(path, {"format": "good"})
    before = path.read_bytes()
    with pytest.raises((AttributeError, pickle.PicklingError)):  # torch.save cannot pickle a lambda: fails mid-write
        write_payload(path, {"format": "bad", "hook": lambda: None})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


def test_loading_models_imports_nothing_from_training():
    """Every module of the store, recording and the studio imports without the training package (issue 18)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "for package in ('mclstudio.store', 'mclstudio.recording', 'mclstudio.tui'):\n"
        "    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('mclstudio.training')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
