"""Values, not shapes: the engine's accuracy matrix and running accuracy, a recording's every dataset,
its summaries and a re-run, all on a deterministic learner that does better than chance and forgets
(tests/standin_learner.py), with expected numbers computed without the engine. Also the reader's path
for an episode that a crash left half-written."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import fields

import h5py
import numpy as np
import pytest

from mclstudio.data.episodes import Episode, EpisodeSpec
from mclstudio.data.sources import get_source
from mclstudio.engine import EngineConfig, EpisodeTrace, StreamEngine, run_episode, same_class_pattern
from mclstudio.recording import LearnerIdentity, RecordingWriter, read_recording, recording_summary, rerun, summarize
from mclstudio.recording.hdf5 import _write_episode
from mclstudio.recording.session import default_rows_queries
from cli_helpers import run_cli
from standin_learner import NearestNeighbourLearner, expected_accuracy_matrix


SPEC = EpisodeSpec(tasks=4, train_shots=2, test_shots=3, seed=0, num_codes=12)
MEMORIES = {"nn5": 5, "nn100": 100}  # forgets tasks that left its last 5 pairs / remembers everything
EPISODES = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def episode(seed: int) -> Episode:
    return get_source("omniglot-mini").episode(SPEC.with_seed(seed))


def learners() -> dict[str, NearestNeighbourLearner]:
    x_shape = get_source("omniglot-mini").x_shape
    return {name: NearestNeighbourLearner(x_shape, 12, memory) for name, memory in MEMORIES.items()}


def expected_summary(matrices: list[np.ndarray]) -> dict[str, object]:
    """The summary figures of one learner straight from the definitions, written out here."""
    T = matrices[0].shape[0]
    final = [m[-1].mean() for m in matrices]  # equal query shots per task: the mean of the last row
    forgets = [np.mean([max(m[k, j] for k in range(j, T - 1)) - m[T - 1, j] for j in range(T - 1)]) for m in matrices]
    curve = [np.mean([m[k, : k + 1].mean() for m in matrices]) for k in range(T)]
    return {"accuracy": np.mean(final), "forgetting": np.mean(forgets), "accuracy_by_tasks_learned": curve}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two episodes of both stand-ins, recorded; the in-memory traces and the expected matrices."""
    config = EngineConfig(rows_queries=default_rows_queries(SPEC))
    idents = [LearnerIdentity(name, f"{name}.pt", f"{i:064x}", {"model": "nearest", "memory": m}, 0)
              for i, (name, m) in enumerate(MEMORIES.items())]
    path = tmp_path_factory.mktemp("values") / "nn.h5"
    writer = RecordingWriter(path, idents, config)
    episodes, traces, expected = [], [], []
    for e in range(EPISODES):
        ep = episode(e)
        tr = run_episode(learners(), ep, config)
        writer.write_episode(ep, tr)
        episodes.append(ep)
        traces.append(tr)
        expected.append({name: expected_accuracy_matrix(ep, m) for name, m in MEMORIES.items()})
    return path, config, idents, episodes, traces, expected


def test_engine_accuracy_matrix_and_running_accuracy_have_the_known_values(recorded):
    _, _, _, episodes, traces, expected = recorded
    for tr, exp in zip(traces, expected):
        for name in MEMORIES:
            matrix, running = exp[name]
            np.testing.assert_allclose(tr[name].accuracy_matrix, matrix, rtol=1e-6)  # NaN where NaN
            np.testing.assert_allclose(tr[name].accuracy, running, rtol=1e-6)
    # not a degenerate case: better than chance, and the short memory forgets what the long one keeps
    first = expected[0]
    assert np.nanmin(first["nn100"][0]) > 1 / SPEC.tasks and first["nn100"][0][-1, 0] > first["nn5"][0][-1, 0]
    assert traces[0]["nn5"].forgetting[0] > 0.5


def test_snapshots_at_task_ends_carry_the_matrix_so_far_and_its_forgetting(recorded):
    ep, (matrix, _) = episode(0), recorded[5][0]["nn5"]
    steps = StreamEngine({"nn5": learners()["nn5"]}, ep, EngineConfig(eval_every="task")).run()
    ends = [s[0] for s in steps if s[0].task_end]
    assert [s.step for s in ends] == [1, 3, 5, 7]
    for k, snap in enumerate(ends):
        filled = np.where(np.arange(4)[:, None] <= k, matrix, np.nan)
        np.testing.assert_allclose(snap.accuracy_matrix, filled, rtol=1e-6)
        best_earlier = [np.max(matrix[j:k, j]) if j < k else matrix[k, j] for j in range(k + 1)]
        np.testing.assert_allclose(snap.forgetting, np.array(best_earlier) - matrix[k, : k + 1], atol=1e-6)


def assert_same_trace(read: EpisodeTrace, written: EpisodeTrace) -> None:
    """Every field equal, floats at the float32 (rows: float16) the file stores them in."""
    for f in fields(EpisodeTrace):
        a, b = getattr(written, f.name), getattr(read, f.name)
        if isinstance(a, list):
            assert len(a) == len(b), f.name
            a, b = (np.stack(x) if x and isinstance(x[0], np.ndarray) else np.asarray(x) for x in (a, b))
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "f":
            stored = np.float16 if a.dtype == np.float16 else np.float32
            a, b = a.astype(stored), b.astype(stored)
        assert a.shape == b.shape and a.dtype.kind == b.dtype.kind, f.name
        np.testing.assert_array_equal(b, a, err_msg=f.name)


def test_every_recorded_dataset_reads_back_equal_to_the_trace(recorded):
    path, config, idents, episodes, traces, _ = recorded
    rec = read_recording(path)
    assert rec.incomplete == 0 and rec.engine_config == config and rec.learners == idents
    assert [e.index for e in rec.episodes] == [0, 1]
    for e, (r, ep, tr) in enumerate(zip(rec.episodes, episodes, traces)):
        assert r.spec == SPEC.with_seed(e)
        for key in ("class_ids", "codes", "train_sample_ids", "test_sample_ids", "query_y"):
            np.testing.assert_array_equal(getattr(r, key), getattr(ep, key)[0].numpy(), err_msg=key)
        np.testing.assert_array_equal(r.stream_task, ep.stream_task.numpy())
        np.testing.assert_array_equal(r.query_task, ep.query_task.numpy())
        np.testing.assert_array_equal(r.rows_query_index, config.rows_queries)
        np.testing.assert_array_equal(r.same_class, same_class_pattern(ep.stream_task, ep.query_task[list(config.rows_queries)]))
        for name in MEMORIES:
            assert_same_trace(r.traces[name], tr[name])
    with h5py.File(path) as f:  # the stored forgetting, which the reader recomputes rather than reads
        for e, tr in enumerate(traces):
            for name in MEMORIES:
                np.testing.assert_array_equal(f[f"episodes/{e:06d}/{name}/forgetting"][()], tr[name].forgetting.astype(np.float32))


def test_summaries_and_replay_report_the_known_figures(recorded, tmp_path, capsys):
    path, _, _, _, traces, expected = recorded
    rec = read_recording(path)
    for row in recording_summary(rec):
        name = row["learner"]
        exp = expected_summary([x[name][0] for x in expected])
        assert row["episodes"] == EPISODES
        assert row["accuracy"] == pytest.approx(exp["accuracy"], abs=1e-6)
        assert row["forgetting"] == pytest.approx(exp["forgetting"], abs=1e-6)
        assert row["accuracy_by_tasks_learned"] == pytest.approx(exp["accuracy_by_tasks_learned"], abs=1e-6)
        in_memory = summarize(name, [tr[name] for tr in traces])
        assert row["accuracy"] == pytest.approx(in_memory["accuracy"], abs=1e-6)
        assert row["final_state_bytes"] == in_memory["final_state_bytes"] > row["first_state_bytes"]
    # the replay command prints the same figures, and its CSV the per-episode curves
    code, out, _ = run_cli(capsys, "replay", path, "--json", "--csv", tmp_path / "curve.csv")
    assert not code
    printed = {r["learner"]: r for r in json.loads(out)["learners"]}
    rows = list(csv.DictReader(open(tmp_path / "curve.csv")))
    for name in MEMORIES:
        exp = expected_summary([x[name][0] for x in expected])
        assert printed[name]["accuracy"] == pytest.approx(exp["accuracy"], abs=1e-6)
        assert printed[name]["forgetting"] == pytest.approx(exp["forgetting"], abs=1e-6)
        for e in range(EPISODES):
            m = expected[e][name][0]
            mine = [r for r in rows if r["learner"] == name and r["episode"] == str(e)]
            assert [float(r["accuracy"]) for r in mine] == pytest.approx([m[k, : k + 1].mean() for k in range(4)], abs=1e-6)
            assert float(mine[0]["episode_forgetting"]) == pytest.approx(expected_summary([m])["forgetting"], abs=1e-6)


def test_rerun_reproduces_the_recorded_curves(recorded):
    path, _, _, _, traces, _ = recorded
    rec = read_recording(path)
    again = rerun(rec, list(learners().items()))
    for old, new in zip(rec.episodes, again):
        for name in MEMORIES:
            np.testing.assert_array_equal(new[name].accuracy.astype(np.float32), old.traces[name].accuracy.astype(np.float32))
            np.testing.assert_array_equal(new[name].accuracy_matrix.astype(np.float32), old.traces[name].accuracy_matrix.astype(np.float32))
            np.testing.assert_array_equal(new[name].predictions_array(), np.stack(old.traces[name].predictions))
    assert np.nanmean(traces[0]["nn100"].accuracy) > 0.5  # the curves compared are not all zeros


def test_an_episode_a_crash_left_half_written_is_skipped(recorded, tmp_path, capsys):
    """A recorder killed while writing episode 2 leaves its temporary copy with a group that lacks
    ``complete`` (set last), possibly without all its datasets. The reader keeps episodes 0 and 1 intact."""
    path, config, idents, episodes, traces, _ = recorded
    crashed = tmp_path / ".nn.h5.tmp-4242"
    shutil.copyfile(path, crashed)
    ep = episode(2)
    with h5py.File(crashed, "a") as f:
        _write_episode(f["episodes"], 2, ep, run_episode(learners(), ep, config), idents, config)
        del f["episodes/000002"].attrs["complete"]  # killed before the last write
        f["episodes"].create_group("000003").create_dataset("class_ids", data=np.zeros(4, dtype=np.int64))  # barely begun
    rec = read_recording(crashed)
    assert rec.incomplete == 2 and [e.index for e in rec.episodes] == [0, 1]
    for r, tr in zip(rec.episodes, traces):
        for name in MEMORIES:
            assert_same_trace(r.traces[name], tr[name])
    code, out, _ = run_cli(capsys, "replay", crashed)
    assert not code
    assert "2 incomplete skipped" in out
