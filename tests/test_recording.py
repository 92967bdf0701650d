"""HDF5 recordings: round trip, crash safety under kill -9, and the replay command (summary, export,
verify, --with, bad files). Tiny random checkpoints saved in the test (no training needed)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.learners.registry import build_learner, make_config
from mclstudio.recording import SCHEMA_VERSION, RecordingError, read_recording, record_session
from mclstudio.recording.session import rebuild_episode
from mclstudio.store.checkpoint import load_checkpoint, save_checkpoint

from cli_helpers import one_line_error, run_cli


TINY = {"d_model": 16, "n_layers": 2, "encoder_channels": 8, "y_vocab": 12}
SPEC = EpisodeSpec(tasks=3, train_shots=2, test_shots=2, seed=7, num_codes=12)
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def save_tiny(path: Path, model: str, seed: int) -> Path:
    torch.manual_seed(seed)
    extra = {} if model == "mamba" else {"n_heads": 2, "d_ff": 32}
    save_checkpoint(path, build_learner(make_config(model, **TINY, **extra)), {"note": "tiny test learner"})
    return path


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Two tiny checkpoints and a 2-episode recording of them."""
    d = tmp_path_factory.mktemp("rec")
    ckpts = [save_tiny(d / "mamba.pt", "mamba", 0), save_tiny(d / "transformer.pt", "transformer", 1)]
    path = record_session([load_checkpoint(c) for c in ckpts], SPEC, 2, d / "run.h5")
    return d, ckpts, path


def test_round_trip(session):
    d, ckpts, path = session
    rec = read_recording(path)
    assert rec.schema_version == SCHEMA_VERSION and rec.incomplete == 0
    assert [ident.name for ident in rec.learners] == ["mamba", "transformer"]
    assert rec.learners[0].sha256 == load_checkpoint(ckpts[0]).sha256
    assert rec.learners[1].config["model"] == "transformer"
    assert [ep.index for ep in rec.episodes] == [0, 1]
    ep = rec.episodes[1]
    assert ep.spec == SPEC.with_seed(8)
    rebuilt = rebuild_episode(ep)  # the inputs come back exactly from the spec
    assert np.array_equal(rebuilt.query_y[0].numpy(), ep.query_y)
    tr = ep.traces["mamba"]
    n, q = 6, 6
    assert tr.accuracy.shape == (n,) and tr.state_bytes.shape == (n,) and tr.layer_norms.shape == (n, 2)
    assert len(set(tr.state_bytes)) == 1 and ep.traces["transformer"].state_bytes[-1] > ep.traces["transformer"].state_bytes[0]
    assert np.stack(tr.predictions).shape == (n, q) and tr.accuracy_matrix.shape == (3, 3)
    assert np.stack(tr.rows).shape == (3, 2, 3, 2 * n)  # task ends x layers x row queries x tokens
    assert ep.same_class.shape == (3, 2 * n)
    # predictions at the last step equal the parallel path's
    learner = load_checkpoint(ckpts[0]).learner
    with torch.no_grad():
        logits = learner(rebuilt.stream_x, rebuilt.stream_y, rebuilt.query_x).logits
    assert np.array_equal(tr.predictions[-1], logits.argmax(-1)[0].numpy())
    with h5py.File(path) as f:  # rows and predictions are stored compressed
        assert f["episodes/000000/mamba/rows"].compression == "gzip"
        assert f["episodes/000000"].attrs["complete"]


def test_kill_9_leaves_every_completed_episode_readable(tmp_path):
    ckpt = save_tiny(tmp_path / "mamba.pt", "mamba", 0)
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "mclstudio", "record", str(ckpt), "--episodes", "10000", "--tasks", "3",
           "--shots", "2", "--test-shots", "2", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for delay in (0.0, 0.013, 0.037, 0.071):  # right after an episode landed, and at arbitrary moments later
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            done = 0
            while time.time() < deadline and done < 3:
                time.sleep(0.02)
                if out.exists():
                    done = len(read_recording(out).episodes)  # readable while being written, too
            assert done >= 3, "the recorder did not get going"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        rec = read_recording(out)
        assert len(rec.episodes) >= 3 and rec.incomplete == 0
        for ep in rec.episodes:  # every dataset of every complete episode reads back
            tr = ep.traces["mamba"]
            assert np.isfinite(tr.accuracy).all() and np.stack(tr.predictions).shape == (6, 6)
        with h5py.File(out) as f:
            assert f.attrs["episodes_complete"] == len(rec.episodes)


def test_replay_summary_json_and_csv(session, capsys, tmp_path):
    d, ckpts, path = session
    code, out, err = run_cli(capsys, "replay", path, "--json", "--csv", tmp_path / "curve.csv")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["episodes"] == 2 and [r["learner"] for r in summary["learners"]] == ["mamba", "transformer"]
    mamba, transformer = summary["learners"]
    assert 0 <= mamba["accuracy"] <= 1 and len(mamba["accuracy_by_tasks_learned"]) == 3
    assert mamba["first_state_bytes"] == mamba["final_state_bytes"]
    assert transformer["final_state_bytes"] > transformer["first_state_bytes"]
    rows = list(csv.DictReader(open(tmp_path / "curve.csv")))
    assert len(rows) == 2 * 2 * 3 and rows[0]["learner"] == "mamba" and rows[2]["tasks_learned"] == "3"
    code, out, err = run_cli(capsys, "replay", path)  # table and plot
    assert code == 0 and "mamba" in out and "tasks learned" in out


def test_replay_with_another_checkpoint(session, capsys, tmp_path):
    d, ckpts, path = session
    other = save_tiny(tmp_path / "other.pt", "mamba", 3)
    code, out, err = run_cli(capsys, "replay", path, "--json", "--with", other)
    assert code == 0, err
    learners = json.loads(out)["learners"]
    assert [r["learner"] for r in learners] == ["mamba", "transformer", "other"]
    assert learners[2]["source"].startswith("with") and learners[2]["episodes"] == 2


def test_verify_passes_then_reports_a_changed_checkpoint(session, capsys, tmp_path):
    d, ckpts, path = session
    code, out, err = run_cli(capsys, "replay", path, "--verify", "--no-plot")
    assert code == 0 and "verify: OK" in out, err
    # Same config, other weights, at the recorded path: the hash and the predictions differ.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    copy = moved / "run.h5"
    copy.write_bytes(path.read_bytes())
    with h5py.File(copy, "a") as f:  # point the recording at a checkpoint we may overwrite
        for g in [f["learners/mamba"], *[f[f"episodes/{e}/mamba"] for e in f["episodes"]]]:
            g.attrs["checkpoint_path"] = str(moved / "mamba.pt")
        for g in [f["learners/transformer"], *[f[f"episodes/{e}/transformer"] for e in f["episodes"]]]:
            g.attrs["checkpoint_path"] = str(ckpts[1])
    save_tiny(moved / "mamba.pt", "mamba", 42)
    code, out, err = run_cli(capsys, "replay", copy, "--verify", "--json")
    assert code == 1
    report = json.loads(out)["verify"]
    assert not report["ok"] and any("sha256" in m for m in report["mismatches"])
    assert any("predictions differ" in m for m in report["mismatches"])
    assert all(m.startswith("mamba") for m in report["mismatches"])


def test_bad_files_get_one_line_error(session, capsys, tmp_path):
    d, ckpts, path = session
    text = tmp_path / "notes.h5"
    text.write_text("not a recording\n")
    assert "not an HDF5 file" in one_line_error(*run_cli(capsys, "replay", text)[::2], exit_code=2)

    future = tmp_path / "future.h5"
    future.write_bytes(path.read_bytes())
    with h5py.File(future, "a") as f:
        f.attrs["schema_version"] = 99
    assert "schema version 99" in one_line_error(*run_cli(capsys, "replay", future)[::2], exit_code=2)

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated or damaged" in one_line_error(*run_cli(capsys, "replay", truncated)[::2], exit_code=2)

    assert "not found" in one_line_error(*run_cli(capsys, "replay", tmp_path / "nope.h5")[::2], exit_code=2)

    # --verify with a recorded checkpoint gone
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    ckpt = save_tiny(lonely / "mamba.pt", "mamba", 0)
    rec_path = record_session([load_checkpoint(ckpt)], SPEC, 1, lonely / "run.h5")
    ckpt.unlink()
    line = one_line_error(*run_cli(capsys, "replay", rec_path, "--verify")[::2], exit_code=2)
    assert "missing" in line and "mamba.pt" in line
    with pytest.raises(RecordingError):
        read_recording(text)


def test_replay_csv_rows_known_values():
    """Two tasks: row 1 of the matrix is [1.0, nan] (after task 1), row 2 is [0.5, 1.0]: accuracy on the
    tasks seen 1.0 then 0.75; task 1 fell from 1.0 to 0.5, so the episode's forgetting is 0.5; the median
    of latencies 1, 2, 4 ms is 2 ms; the last state is 300 bytes."""
    from mclstudio.engine.stream import EpisodeTrace
    from mclstudio.recording.session import REPLAY_CSV_HEADER, replay_csv_rows

    trace = EpisodeTrace("m", 3, 4, 2, accuracy=np.full(3, np.nan), state_bytes=np.array([100, 200, 300]),
                         latency_s=np.array([0.001, 0.004, 0.002]), layer_norms=np.zeros((3, 1)),
                         accuracy_matrix=np.array([[1.0, np.nan], [0.5, 1.0]]))
    rows = replay_csv_rows({"m": [trace]}, [7])
    assert len(REPLAY_CSV_HEADER) == 7
    assert rows == [["m", 7, 1, "1.000000", "0.500000", 300, "2.0000"],
                    ["m", 7, 2, "0.750000", "0.500000", 300, "2.0000"]]


def test_rerun_with_names_a_taken_learner_and_reproduces_its_recording(session):
    """The recorded mamba re-run under a name already taken: "mamba (with)"; with the same checkpoint and
    the recording's settings it predicts exactly what was recorded."""
    from mclstudio.recording.session import rerun_with

    d, ckpts, path = session
    rec = read_recording(path)
    [(name, traces, source)] = rerun_with(rec, [load_checkpoint(ckpts[0])], ["mamba", "transformer"])
    assert (name, source) == ("mamba (with)", "with mamba.pt")
    assert len(traces) == 2
    for ep, trace in zip(rec.episodes, traces):
        assert (trace.predictions_array() == np.stack(ep.traces["mamba"].predictions)).all()
