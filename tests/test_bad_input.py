"""Every command answers bad input with exactly one `error:` line, a non-zero exit and no traceback, and
leaves every file as it was (issue 17). All of these are refused before any compute."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mclstudio.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CKPT = str(ROOT / "checkpoints" / "mamba.pt")
REC = str(ROOT / "recordings" / "run.h5")
EPISODE = ["--tasks", "2", "--shots", "1", "--test-shots", "1"]
ADAPT = [CKPT, "--dataset", "omniglot-mini:inverted", "--steps", "1", "--batch-size", "1", *EPISODE]

# (command line, a word the one line must hold). EXISTING is a file the test makes, FOLDER the test's folder.
CASES: list[tuple[list[str], str]] = [
    (["bogus"], "No such command"),
    (["--bogus"], "No such option"),
    (["train", "--d-model", "0"], "--d-model must be at least 1, not 0"),
    (["train", "--layers", "0"], "--layers must be at least 1"),
    (["train", "--model", "transformer", "--heads", "3", "--d-model", "16", "--device", "cpu"], "divisible"),
    (["train", "--steps", "0"], "--steps must be at least 1"),
    (["train", "--episodes", "4"], "No such option"),
    (["train", "--lr", "-1"], "--lr must be positive"),
    (["train", "--lr", "nan"], "not a finite number"),
    (["train", "--noise", "inf"], "not a finite number"),
    (["train", "--slct-lambda", "-0.5"], "at least 0"),
    (["train", "--dropout", "1.5"], "below 1"),
    (["train", "--rotate-embeddings", "1.5"], "--rotate-embeddings must be at most 1"),
    (["train", "--rotate-embeddings", "nan"], "not a finite number"),
    (["train", "--rotate-embeddings", "1"], "frozen encoder"),
    (["train", "--init-from", "MISSING.pt"], "not found"),
    (["train", "--max-minutes", "-1"], "at least 0"),
    (["train", "--tasks", "x"], "whole number"),
    (["train", "--model", "lstm"], "lstm"),
    (["train", "--resume"], "--resume needs -o"),
    (["train", "-o", "EXISTING"], "already exists; pass --resume"),
    (["train", "-o", "FOLDER"], "is a folder"),
    (["train", "-o", "/proc/mclstudio-test/model.pt"], "not writable"),
    (["train", "-o", "EXISTING/model.pt"], "is not a folder"),
    (["train", "-o", "FOLDER/m.pt", "--log-file", "FOLDER/m.pt"], "same file"),
    (["eval"], "Missing argument"),
    (["eval", CKPT, "--noise", "-1"], "--noise must be at least 0"),
    (["eval", CKPT, "--noise", "nan"], "not a finite number"),
    (["eval", CKPT, "--noise", "inf"], "not a finite number"),
    (["eval", CKPT, "--episodes", "0"], "--episodes must be at least 1"),
    (["eval", CKPT, "--batch-size", "-2"], "--batch-size must be at least 1"),
    (["eval", CKPT, "--precision", "fp64"], "fp32, bf16, fp16"),
    (["eval", "FOLDER/missing.pt"], "not found"),
    (["adapt", CKPT], "Missing option '--dataset'"),
    (["adapt", *ADAPT, "--rank", "0"], "--rank must be at least 1"),
    (["adapt", *ADAPT, "--lr", "nan"], "not a finite number"),
    (["adapt", *ADAPT, "--alpha", "inf"], "not a finite number"),
    (["adapt", *ADAPT, "--tasks", "-1"], "at least 0"),
    (["adapt", *ADAPT, "-o", CKPT, "--force"], "never writes to its own input"),
    (["adapt", *ADAPT, "-o", "EXISTING"], "already exists; pass --force"),
    (["adapt", *ADAPT, "--resume"], "--resume needs -o"),
    (["open"], "Missing argument"),
    (["open", CKPT, "--tasks", "0"], "--tasks must be at least 1"),
    (["open", CKPT, "--noise", "nan"], "not a finite number"),
    (["open", CKPT, "--split", "val"], "'val' is not one of"),
    (["open", CKPT, "--fused-step", "uncaptured"], "'uncaptured' is not one of 'auto', 'off'"),
    (["open", CKPT, "--record-dir", "FOLDER/none"], "is not a folder"),
    (["open", CKPT, "--record-dir", "/proc"], "not writable"),
    (["info"], "Missing argument"),
    (["info", "EXISTING"], "not a readable"),
    (["record", CKPT, "--episodes", "0"], "--episodes must be at least 1"),
    (["record", CKPT, "--noise", "nan"], "not a finite number"),
    (["record", CKPT, "--shots", "-1"], "shots must be at least 1, not -1"),
    (["record", CKPT, "--seed", "-3"], "--seed must be at least 0"),
    (["record", CKPT, "--eval-every", "never"], "'never' is not one of"),
    (["record", CKPT, "-o", "EXISTING"], "already exists; pass --append"),
    (["record", CKPT, "-o", CKPT, "--force"], "never writes to its own input"),
    (["record", CKPT, "--force", "--append", "-o", "EXISTING"], "exclude each other"),
    (["record", CKPT, "--episodes", "1000000000", "-o", "FOLDER/big.h5"], "not enough free space"),
    (["replay"], "Missing argument"),
    (["replay", "FOLDER/missing.h5"], "not found"),
    (["replay", REC, "--csv", REC, "--force"], "never writes to its own input"),
    (["replay", REC, "--csv", "EXISTING"], "already exists; pass --force"),
    (["replay", REC, "--adapter", "EXISTING"], "--with"),
]


def _state(*folders: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under the folders, hidden ones (locks, temporaries) included."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(Path(a).name for a in c[0])[:60] for c in CASES])
def test_bad_input_gets_one_line_and_changes_no_file(tmp_path, monkeypatch, capsys, argv, needle):
    existing = tmp_path / "existing.txt"
    existing.write_text("a user's file\n")
    work = tmp_path / "work"  # the working folder: default outputs (runs/, run.h5) would land here
    work.mkdir()
    monkeypatch.chdir(work)
    args = [str(existing) if a == "EXISTING" else a.replace("EXISTING", str(existing)).replace("FOLDER", str(tmp_path))
            for a in argv]
    before = _state(tmp_path, ROOT / "checkpoints", ROOT / "recordings")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code not in (0, None)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and needle in lines[0], lines[0]
    assert _state(tmp_path, ROOT / "checkpoints", ROOT / "recordings") == before
    assert not os.listdir(work)


def test_clip_never_cuts_a_word():
    from mclstudio.formatting import clip

    assert clip("short message", 20) == "short message"
    assert clip("first line\nsecond line", 40) == "first line"
    assert clip("the quick brown fox jumps over", 18) == "the quick brown..."
    assert clip("options, do those steps", 12) == "options..."  # no dangling comma before the dots
    assert clip("\x1b[1mbold\x1b[0m words", 40) == "bold words"  # no terminal codes in a message


class NeedsUnpickling:  # an object only arbitrary unpickling can rebuild
    pass


def test_unpickling_refusal_ends_on_a_whole_word(tmp_path, capsys):
    import pickle

    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"x": NeedsUnpickling()}, evil)
    with pytest.raises(pickle.UnpicklingError) as refused:
        torch.load(evil, weights_only=True)
    original = re.sub(r"\x1b\[[0-9;]*m", "", str(refused.value)).strip().splitlines()[0]
    with pytest.raises(SystemExit):
        main(["info", str(evil)])
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and "\n" not in line and "\x1b" not in line and "arbitrary unpickling" in line
    shown = line.split("for safety (", 1)[1].removesuffix(")")
    if shown.endswith("..."):  # shortened: at a word boundary of torch's message
        kept = shown[:-3]
        assert original.startswith(kept) and original[len(kept)] in " ,;:(", (kept, original)
    else:
        assert shown == original
