"""The command line: real runs on tiny configs, and one clear line + non-zero exit for bad input."""

from __future__ import annotations

import json

import pytest
import torch


from cli_helpers import one_line_error, run_cli


TINY = ["--d-model", "16", "--layers", "1", "--encoder-channels", "8", "--y-vocab", "12", "--device", "cpu"]


def test_train_eval_info_round_trip(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    code, out, _ = run_cli(capsys, "train", "--model", "mamba", "--tasks", "2", "--shots", "1", "--test-shots", "1",
                           "--steps", "2", "--batch-size", "2", "--log-every", "1", "-o", str(ckpt), *TINY)
    assert code == 0 and f"saved {ckpt}" in out
    code, out, _ = run_cli(capsys, "eval", str(ckpt), "--episodes", "4", "--batch-size", "4", "--json", "--device", "cpu")
    assert code == 0
    report = json.loads(out)
    assert report["model"] == "mamba" and len(report["results"]) == 6
    assert report["results"][0]["episodes"] == 4
    code, out, _ = run_cli(capsys, "info", str(ckpt))
    assert code == 0 and json.loads(out)["config"]["d_model"] == 16


def test_bad_checkpoint_paths_and_files(tmp_path, capsys):
    one_line_error(*run_cli(capsys, "eval", str(tmp_path / "missing.pt"))[::2], "not found")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    one_line_error(*run_cli(capsys, "eval", str(text))[::2], "not a readable")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    one_line_error(*run_cli(capsys, "info", str(foreign))[::2], "not an mclstudio checkpoint")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--tasks", "800"], "716 classes"),  # more tasks than the meta-train split has
        (["--shots", "0"], "at least 1"),
        (["--shots", "18", "--test-shots", "5"], "samples"),
        (["--dataset", "nosuchdata"], "unknown dataset"),
        (["--dataset", "torchvision:MNIST", "--root", "/nonexistent/folder"], "not found"),
        (["--steps", "0"], "at least 1"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--lr", "-1"], ""),
    ],
)
def test_train_rejects_impossible_options(tmp_path, capsys, args, needle):
    base = ["train", "--steps", "1", "--batch-size", "1", "-o", str(tmp_path / "x.pt"),
            "--d-model", "16", "--layers", "1", "--encoder-channels", "8", "--y-vocab", "1000"]
    if "--device" not in args:
        base += ["--device", "cpu"]
    code, _, err = run_cli(capsys, *base, *args)
    one_line_error(code, err, needle)
    assert not (tmp_path / "x.pt").exists()


def test_unknown_model_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys, "train", "--model", "lstm")
    assert code == 2 and "lstm" in err and "Traceback" not in err
