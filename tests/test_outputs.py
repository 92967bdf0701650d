"""Files (issue 17): nothing is overwritten or lost without being asked. Outputs are checked before any
compute, locked while written, never one of the command's inputs; temporaries go on every exit path;
Ctrl-C / SIGTERM in train and adapt saves a resumable file. Tiny random checkpoints and tiny runs."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
from pathlib import Path

import h5py
import pytest
import torch

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.files import OutputError, atomic_target, check_output, claim_output, output_lock
from mclstudio.learners.registry import build_learner, make_config
from mclstudio.recording import read_recording
from mclstudio.store.checkpoint import file_sha256, load_checkpoint, save_checkpoint

from cli_helpers import one_line_error, run_cli


TINY_MODEL = ["--d-model", "16", "--layers", "1", "--encoder-channels", "4", "--y-vocab", "4", "--device", "cpu"]
TINY_RUN = ["--tasks", "2", "--shots", "1", "--test-shots", "1", "--batch-size", "2", "--log-every", "1"]
RECORD = ["--episodes", "1", "--tasks", "2", "--shots", "1", "--test-shots", "1", "--eval-every", "task"]


pytestmark = pytest.mark.usefixtures("one_thread")


def save_tiny(path: Path, model: str = "mamba", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    extra = {} if model == "mamba" else {"n_heads": 2, "d_ff": 32}
    config = make_config(model, d_model=16, n_layers=1, encoder_channels=4, y_vocab=12, **extra)
    spec = EpisodeSpec(tasks=2, train_shots=1, test_shots=1, num_codes=12)
    save_checkpoint(path, build_learner(config), {"episode_spec": spec.to_dict()})
    return path


# ---- the checks themselves ------------------------------------------------------------------------
def test_check_output_refuses_what_it_must(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("keep me")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        check_output(mine)
    assert check_output(mine, replace=True) == mine
    with pytest.raises(OutputError, match="never writes to its own input"):
        check_output(mine, replace=True, inputs=[mine])
    link = tmp_path / "link.txt"
    link.symlink_to(mine)  # the same file under another name is still the input
    with pytest.raises(OutputError, match="never writes to its own input"):
        check_output(link, replace=True, inputs=[mine])
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path)
    with pytest.raises(OutputError, match="is not a folder"):
        check_output(mine / "x.pt")
    with pytest.raises(OutputError, match="not writable"):
        check_output("/proc/mclstudio/x.pt")
    free = __import__("shutil").disk_usage(tmp_path).free
    with pytest.raises(OutputError, match="not enough free space"):
        check_output(tmp_path / "big.h5", estimate_bytes=free * 2)
    assert check_output(tmp_path / "new" / "deeper" / "x.pt", estimate_bytes=1) == tmp_path / "new" / "deeper" / "x.pt"
    assert mine.read_text() == "keep me" and not (tmp_path / "new").exists()


def test_second_writer_is_refused_and_lock_is_released(tmp_path):
    out = tmp_path / "run.h5"
    with output_lock(out):
        assert (tmp_path / ".run.h5.lock").exists()
        with pytest.raises(OutputError, match="is being written by another process"):
            with output_lock(out):
                pass
    assert not (tmp_path / ".run.h5.lock").exists()
    with output_lock(out):  # free again
        pass


def test_claim_output_removes_the_folders_it_made_when_nothing_was_written(tmp_path):
    with pytest.raises(RuntimeError):
        with claim_output(tmp_path / "runs" / "a" / "model.pt"):
            raise RuntimeError("the run failed before writing")
    assert os.listdir(tmp_path) == []


def test_atomic_target_removes_the_temporary_on_every_failure(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the last good file")
    for failure in (ValueError("boom"), KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device"),
                    RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")):
        with pytest.raises(OutputError if isinstance(failure, (OSError, RuntimeError)) else type(failure)):
            with atomic_target(path) as tmp:
                tmp.write_bytes(b"half a fi")
                raise failure
        assert sorted(os.listdir(tmp_path)) == ["model.pt"] and path.read_bytes() == b"the last good file"


def test_a_full_disk_during_save_checkpoint_leaves_no_temporary(tmp_path, monkeypatch):
    path = save_tiny(tmp_path / "m.pt")
    sha = file_sha256(path)

    def save_until_the_disk_is_full(obj, f):  # writes part of the file, then fails as a full disk does
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    with pytest.raises(OutputError, match="No space left on device; the file there is unchanged"):
        save_checkpoint(path, load_checkpoint(path).learner, {})
    assert os.listdir(tmp_path) == ["m.pt"] and file_sha256(path) == sha


# ---- record -----------------------------------------------------------------------------------------
def test_record_refuses_existing_output_and_own_input_appends_same_schema(tmp_path, capsys):
    a, b = save_tiny(tmp_path / "a.pt"), save_tiny(tmp_path / "b.pt", "transformer", 1)
    sha_a = file_sha256(a)
    notes = tmp_path / "notes.txt"
    notes.write_text("unrelated")
    one_line_error(*run_cli(capsys, "record", a, *RECORD, "-o", notes)[::2], "already exists")
    assert notes.read_text() == "unrelated"
    one_line_error(*run_cli(capsys, "record", a, *RECORD, "-o", a, "--force")[::2], "own input")
    assert file_sha256(a) == sha_a

    rec = tmp_path / "run.h5"
    assert run_cli(capsys, "record", a, *RECORD, "-o", rec)[0] == 0
    first = rec.read_bytes()
    one_line_error(*run_cli(capsys, "record", a, *RECORD, "-o", rec)[::2], "pass --append")
    assert rec.read_bytes() == first
    code, out, err = run_cli(capsys, "record", a, *RECORD, "--seed", "5", "--append", "-o", rec)
    assert code == 0 and "(appended)" in out, err
    assert run_cli(capsys, "record", a, *RECORD, "--append", "-o", rec)[0] == 0  # no --seed: after the recorded ones
    recording = read_recording(rec)
    assert [ep.index for ep in recording.episodes] == [0, 1, 2]
    assert [ep.spec.seed for ep in recording.episodes] == [0, 5, 6]
    with h5py.File(rec, "r") as f:
        assert f.attrs["episodes_complete"] == 3
    appended = rec.read_bytes()
    for other, needle in [((b,), "learners"), ((a, "--precision", "bf16"), "precision"),
                          ((a, "--eval-every", "step"), "eval_every")]:
        argv = ["record", *other, *RECORD, "--append", "-o", rec]
        if "--eval-every" in other:
            argv = ["record", a, "--episodes", "1", "--tasks", "2", "--shots", "1", "--test-shots", "1",
                    "--eval-every", "step", "--append", "-o", rec]
        one_line_error(*run_cli(capsys, *argv)[::2], needle)
    one_line_error(*run_cli(capsys, "record", a, "--episodes", "1", "--tasks", "3", "--shots", "1", "--test-shots", "1",
                            "--eval-every", "task", "--append", "-o", rec)[::2], "tasks")
    assert rec.read_bytes() == appended
    code, _, _ = run_cli(capsys, "record", a, *RECORD, "--force", "-o", rec)  # replaced: one episode again
    assert code == 0 and len(read_recording(rec).episodes) == 1
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt", "notes.txt", "run.h5"]  # no lock or temporary left


def test_two_record_runs_on_one_output_one_is_refused(tmp_path, capsys):
    a = save_tiny(tmp_path / "a.pt")
    rec = tmp_path / "run.h5"
    with output_lock(rec):  # another process recording there
        one_line_error(*run_cli(capsys, "record", a, *RECORD, "-o", rec)[::2], "being written by another process")
    assert not rec.exists()


def test_replay_csv_refuses_existing_and_own_input(tmp_path, capsys):
    a = save_tiny(tmp_path / "a.pt")
    rec = tmp_path / "run.h5"
    assert run_cli(capsys, "record", a, *RECORD, "-o", rec)[0] == 0
    table = tmp_path / "acc.csv"
    table.write_text("mine")
    one_line_error(*run_cli(capsys, "replay", rec, "--csv", table, "--no-plot")[::2], "already exists")
    assert table.read_text() == "mine"
    one_line_error(*run_cli(capsys, "replay", rec, "--csv", rec, "--force", "--no-plot")[::2], "own input")
    code, _, err = run_cli(capsys, "replay", rec, "--csv", table, "--force", "--no-plot")
    assert code == 0, err
    assert table.read_text().splitlines()[0].startswith("learner,episode,tasks_learned")


# ---- train and adapt --------------------------------------------------------------------------------
def test_train_default_output_is_a_new_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    outs = []
    for _ in range(2):
        code, out, err = run_cli(capsys, "train", "--model", "mamba", "--steps", "1", *TINY_RUN, *TINY_MODEL)
        assert code == 0, err
        outs.append(Path(out.split("saved ", 1)[1].split(" after")[0]))
    assert outs[0] != outs[1]
    for path in outs:
        assert path.parts[0] == "runs" and path.name == "model.pt" and path.parent.name.startswith("mamba-omniglot-mini-")
        assert load_checkpoint(path).metadata["steps"] == 1
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # nothing in checkpoints/


def test_train_existing_output_needs_force_or_resume(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert run_cli(capsys, "train", "--steps", "1", *TINY_RUN, *TINY_MODEL, "-o", out)[0] == 0
    sha = file_sha256(out)
    one_line_error(*run_cli(capsys, "train", "--steps", "1", *TINY_RUN, *TINY_MODEL, "-o", out)[::2], "already exists")
    assert file_sha256(out) == sha
    code, _, err = run_cli(capsys, "train", "--steps", "2", *TINY_RUN, *TINY_MODEL, "-o", out, "--resume")
    assert code == 0 and load_checkpoint(out).metadata["steps"] == 2, err
    code, _, err = run_cli(capsys, "train", "--steps", "1", *TINY_RUN, *TINY_MODEL, "-o", out, "--force")
    assert code == 0 and load_checkpoint(out).metadata["steps"] == 1, err


def _signal_after_first_step(monkeypatch, module, signum: int) -> None:
    """Send the process ``signum`` (as Ctrl-C or `kill` would) once the first training step has run."""
    real = module.meta_train_step
    calls = []

    def step_then_signal(*args, **kw):
        stats = real(*args, **kw)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signum)
        return stats

    monkeypatch.setattr(module, "meta_train_step", step_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_in_train_saves_a_resumable_checkpoint(tmp_path, monkeypatch, capsys, signum):
    import mclstudio.training.loop as loop

    out = tmp_path / "m.pt"
    argv = ["train", "--steps", "3", *TINY_RUN, *TINY_MODEL, "-o", str(out)]
    _signal_after_first_step(monkeypatch, loop, signum)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130 and "interrupted after step 1" in err and str(out) in err, err
    ckpt = load_checkpoint(out, with_training_state=True)
    assert ckpt.training_state["step"] == 1 and ckpt.metadata["steps"] == 1
    resume = err.split("continue with: ")[1].strip()
    assert resume == shlex.join(["mclstudio", *argv[:-2], "--resume", "-o", str(out)])
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *shlex.split(resume)[1:])
    assert code == 0 and load_checkpoint(out).metadata["steps"] == 3, err
    # the interrupted and resumed run ends where an uninterrupted one does
    straight = tmp_path / "straight.pt"
    assert run_cli(capsys, "train", "--steps", "3", *TINY_RUN, *TINY_MODEL, "-o", straight)[0] == 0
    resumed, whole = load_checkpoint(out).learner.state_dict(), load_checkpoint(straight).learner.state_dict()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "straight.pt"]


def test_ctrl_c_in_adapt_saves_a_resumable_adapter(tmp_path, monkeypatch, capsys):
    import mclstudio.training.loop as loop
    from mclstudio.store.adapters import load_adapter

    base = save_tiny(tmp_path / "base.pt")
    sha = file_sha256(base)
    out = tmp_path / "ad.pt"
    argv = ["adapt", str(base), "--dataset", "omniglot-mini:inverted", "--steps", "3", "--batch-size", "2",
            "--tasks", "2", "--shots", "1", "--test-shots", "1", "--rank", "2", "--device", "cpu", "-o", str(out)]
    _signal_after_first_step(monkeypatch, loop, signal.SIGINT)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130 and "interrupted after step 1" in err, err
    assert torch.load(out, weights_only=True)["training_state"]["step"] == 1
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *shlex.split(err.split("continue with: ")[1].strip())[1:])
    assert code == 0, err
    assert "training_state" not in torch.load(out, weights_only=True)
    straight = tmp_path / "straight.pt"
    assert run_cli(capsys, *argv[:-1], straight)[0] == 0
    resumed, whole = load_adapter(out).tensors, load_adapter(straight).tensors
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert file_sha256(base) == sha


def test_adapt_default_output_is_a_run_folder_and_never_its_input(tmp_path, monkeypatch, capsys):
    base = save_tiny(tmp_path / "base.pt")
    monkeypatch.chdir(tmp_path)
    args = ["--dataset", "omniglot-mini:inverted", "--steps", "1", "--batch-size", "1", "--tasks", "2", "--shots", "1",
            "--test-shots", "1", "--rank", "2", "--device", "cpu"]
    code, out, err = run_cli(capsys, "adapt", base, *args)
    assert code == 0, err
    saved = Path(out.split("saved ", 1)[1].split(" (")[0])
    assert saved.parts[0] == "runs" and saved.name == "adapter.pt"
    assert saved.parent.name.startswith("base-omniglot-mini-inverted-r2-")
    assert sorted(os.listdir(tmp_path)) == ["base.pt", "runs"]


# ---- strict JSON ------------------------------------------------------------------------------------
def _strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_nan_becomes_null(tmp_path, capsys):
    ckpt = save_tiny(tmp_path / "a.pt")
    # one episode: no confidence interval (NaN inside), which must come out as null
    code, out, err = run_cli(capsys, "eval", ckpt, "--episodes", "1", "--batch-size", "1", "--noise", "0.5", "--json",
                             "--device", "cpu")
    assert code == 0, err
    report = _strict(out)
    assert report["results"][0]["episodes"] == 1 and report["results"][0]["ci95"] is None
    rec = tmp_path / "run.h5"
    assert run_cli(capsys, "record", ckpt, *RECORD, "-o", rec)[0] == 0
    code, out, err = run_cli(capsys, "replay", rec, "--json")
    assert code == 0, err
    assert _strict(out)["learners"][0]["accuracy_ci95"] is None
    code, out, _ = run_cli(capsys, "info", ckpt)
    assert code == 0 and _strict(out)["config"]["d_model"] == 16


def test_two_record_processes_on_one_output_leave_a_readable_file(tmp_path):
    """Two real `mclstudio record --force` processes started together on one -o: each either records
    (exit 0) or is refused with the one lock line; the file left is a readable recording of one of them."""
    import subprocess
    import sys

    a = save_tiny(tmp_path / "a.pt")
    rec = tmp_path / "run.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-m", "mclstudio", "record", str(a), "--episodes", "3", "--tasks", "2", "--shots", "2",
            "--test-shots", "1", "--force", "-o", str(rec)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    for code, err in results:
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 0 or (code == 2 and len(lines) == 1 and "being written by another process" in lines[0]), err
    assert any(code == 0 for code, _ in results)
    assert len(read_recording(rec).episodes) == 3
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "run.h5"]


def test_a_full_disk_while_recording_keeps_the_finished_episodes_and_no_temporary(tmp_path, monkeypatch, capsys):
    import mclstudio.recording.hdf5 as hdf5

    a = save_tiny(tmp_path / "a.pt")
    rec = tmp_path / "run.h5"
    assert run_cli(capsys, "record", a, *RECORD, "-o", rec)[0] == 0
    before = rec.read_bytes()

    def copy_until_the_disk_is_full(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hdf5.shutil, "copyfile", copy_until_the_disk_is_full)
    code, _, err = run_cli(capsys, "record", a, *RECORD, "--append", "-o", rec)
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # after the progress lines
    assert code == 2 and errors == [err.strip().splitlines()[-1]], err
    assert errors[0] == f"error: cannot write {rec}: No space left on device; the file there is unchanged"
    assert rec.read_bytes() == before and len(read_recording(rec).episodes) == 1
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "run.h5"]
