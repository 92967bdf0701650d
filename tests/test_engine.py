"""The streaming engine: lock-step snapshots against the parallel path, the accuracy matrix, state memory
and association rows. Tiny random learners (the engine does not care whether they learned anything)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mclstudio.data.episodes import EpisodeSpec
from mclstudio.data.sources import get_source
from mclstudio.engine import EngineConfig, StreamEngine, run_episode, same_class_pattern
from mclstudio.learners.registry import build_learner, make_config
from mclstudio.metrics import per_task_accuracy

TINY = {"d_model": 16, "n_layers": 2, "encoder_channels": 8, "y_vocab": 12}
ATTN = {"n_heads": 2, "d_ff": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_learner(model: str, seed: int = 0):
    torch.manual_seed(seed)
    extra = {} if model == "mamba" else ATTN
    return build_learner(make_config(model, **TINY, **extra)).eval()


def tiny_episode(tasks: int = 3, shots: int = 2, test_shots: int = 2, seed: int = 5):
    spec = EpisodeSpec(tasks=tasks, train_shots=shots, test_shots=test_shots, seed=seed, num_codes=12)
    return get_source("omniglot-mini").episode(spec)


@pytest.fixture(scope="module")
def learners():
    return {"mamba": tiny_learner("mamba"), "transformer": tiny_learner("transformer", 1)}


def test_final_predictions_match_the_parallel_path(learners):
    ep = tiny_episode()
    steps = StreamEngine(learners, ep).run()
    assert len(steps) == ep.stream_x.shape[1] and [s.learner for s in steps[-1]] == ["mamba", "transformer"]
    for snap in steps[-1]:
        parallel = learners[snap.learner](ep.stream_x, ep.stream_y, ep.query_x).logits.argmax(-1)[0]
        assert np.array_equal(snap.query_index, np.arange(ep.query_x.shape[1]))
        assert np.array_equal(snap.predictions, parallel.numpy())
        assert snap.tokens == 2 * ep.stream_x.shape[1]


def test_accuracy_matrix_matches_prefix_streams(learners):
    ep = tiny_episode()
    traces = run_episode(learners, ep)
    T, S = ep.tasks, 2
    for name, learner in learners.items():
        A = traces[name].accuracy_matrix
        assert A.shape == (T, T)
        assert np.isnan(A[np.triu_indices(T, 1)]).all() and np.isfinite(A[np.tril_indices(T)]).all()
        for k in range(T):
            seen = ep.query_task <= k
            logits = learner(ep.stream_x[:, : (k + 1) * S], ep.stream_y[:, : (k + 1) * S], ep.query_x[:, seen]).logits
            correct = logits.argmax(-1)[0] == ep.query_y[0, seen]
            expected = per_task_accuracy(correct, ep.query_task[seen], k + 1).numpy()
            assert A[k, : k + 1] == pytest.approx(expected)
        # equal query shots per task: the running accuracy at the end is the mean of the last row
        assert traces[name].accuracy[-1] == pytest.approx(A[-1].mean())
        assert traces[name].forgetting.shape == (T,) and traces[name].forgetting[-1] == 0


def test_eval_every_task_evaluates_at_task_ends_only(learners):
    ep = tiny_episode()
    steps = StreamEngine(learners, ep, EngineConfig(eval_every="task")).run()
    evaluated = [s[0].step for s in steps if s[0].accuracy is not None]
    assert evaluated == [1, 3, 5] and all(s[0].task_end == (s[0].step in evaluated) for s in steps)
    # predictions cover the queries of the tasks seen so far
    assert len(steps[1][0].predictions) == 2 and len(steps[3][0].predictions) == 4
    none = StreamEngine(learners, ep, EngineConfig(eval_every="none")).run()
    assert all(s[0].accuracy is None for s in none)


def test_state_memory_constant_for_mamba_growing_for_transformer(learners):
    ep = tiny_episode(tasks=4, shots=3)
    steps = StreamEngine(learners, ep, EngineConfig(eval_every="none")).run()
    mamba = [s[0].state_bytes for s in steps]
    transformer = [s[1].state_bytes for s in steps]
    assert len(set(mamba)) == 1 and mamba[0] > 0
    assert all(b > a for a, b in zip(transformer, transformer[1:]))
    # the KV cache holds K and V of every token read: linear in tokens
    assert transformer[-1] == transformer[0] * len(steps)
    assert steps[0][0].layer_norms.shape == (2,) and steps[0][0].latency_s > 0


def test_rows_shape_and_same_class_pattern(learners):
    ep = tiny_episode()
    rows_queries = (0, 2, 4)  # the first query of each task (2 query shots per task)
    steps = StreamEngine(learners, ep, EngineConfig(eval_every="task", rows_queries=rows_queries)).run()
    with_rows = [s for s in steps if s[0].rows is not None]
    assert [s[0].step for s in with_rows] == [1, 3, 5]
    for snaps in with_rows:
        for snap in snaps:
            tokens = snap.tokens
            assert snap.rows.shape == (2, 3, tokens)
            assert (snap.rows >= 0).all() and np.allclose(snap.rows.sum(-1), 1.0, atol=1e-4)
            assert snap.same_class.shape == (3, tokens)
    # after the whole stream: task t owns tokens 4t..4t+3 (2 shots x (x, y))
    expected = np.kron(np.eye(3), np.ones(4))
    assert np.array_equal(with_rows[-1][0].same_class, expected)
    # rows equal the parallel path's on the stream read so far
    n = 4
    with torch.no_grad():
        out = learners["mamba"](ep.stream_x[:, :n], ep.stream_y[:, :n], ep.query_x[:, list(rows_queries)], with_rows=True)
    assert np.allclose(with_rows[1][0].rows, torch.stack([r[0] for r in out.rows]).numpy(), atol=1e-5)
    assert np.array_equal(same_class_pattern(torch.tensor([0, 1]), torch.tensor([1])), [[0, 0, 1, 1]])


def test_engine_leaves_grad_mode_alone_and_checks_input(learners):
    ep = tiny_episode()
    it = iter(StreamEngine(learners, ep))
    next(it)
    assert torch.is_grad_enabled()  # no_grad is per step, never held across a yield
    with pytest.raises(ValueError, match="rows query index"):
        StreamEngine(learners, ep, EngineConfig(rows_queries=(99,)))
    with pytest.raises(ValueError, match="eval_every"):
        StreamEngine(learners, ep, EngineConfig(eval_every="sometimes"))
    big = get_source("omniglot-mini").episode(EpisodeSpec(tasks=8, train_shots=1, test_shots=1, num_codes=100, seed=3))
    assert int(big.codes.max()) >= 12  # codes beyond the tiny learners' 12
    with pytest.raises(ValueError, match="label codes"):
        StreamEngine(learners, big)


@pytest.mark.parametrize("model", ["mamba", "longhorn", "protonet", "linear_transformer", "performer", "transformer"])
def test_fused_step_body_gives_the_op_by_op_snapshots(model):
    """The body that engine/graphs.py captures as a CUDA graph (step, every query answered, norms, the
    state copied back into its own buffers) run uncaptured on the CPU: every snapshot equals the op-by-op
    path's, step by step (the shipped checkpoints, so that predictions vary and a task can be forgotten).
    The Transformer's fused step reads a KV cache preallocated for the episode, masked beyond a position
    kept on the device; the op-by-op path's cache grows, and the memory reported is the same (the used
    part) at every step."""
    from pathlib import Path

    from mclstudio.store.checkpoint import load_checkpoint

    learner = load_checkpoint(Path(__file__).resolve().parents[1] / "checkpoints" / f"{model}.pt").learner
    ep = get_source("omniglot-mini").episode(EpisodeSpec(tasks=10, train_shots=1, test_shots=2, seed=3, num_codes=100))
    runs = {mode: StreamEngine({model: learner}, ep, EngineConfig(fused_step=mode, rows_queries=(0, 4))).run()
            for mode in ("off", "uncaptured")}
    for (ref,), (fused,) in zip(runs["off"], runs["uncaptured"], strict=True):
        assert fused.state_bytes == ref.state_bytes
        assert fused.accuracy == ref.accuracy
        np.testing.assert_array_equal(fused.query_index, ref.query_index)
        np.testing.assert_array_equal(fused.predictions, ref.predictions)
        np.testing.assert_allclose(fused.layer_norms, ref.layer_norms, rtol=1e-5)
        np.testing.assert_array_equal(fused.accuracy_matrix, ref.accuracy_matrix)
        np.testing.assert_array_equal(fused.rows, ref.rows)
    accuracies = [snaps[0].accuracy for snaps in runs["off"]]
    assert len(set(accuracies)) > 1  # the episode exercises right and wrong answers


def test_fused_step_is_only_for_fixed_shape_states():
    """A learner whose state grows (here a nearest-neighbour stand-in that keeps every token) takes the
    op-by-op path even when asked for the fused one, and the Transformer streams fused from a KV cache
    preallocated for the whole episode; a bad mode is refused."""
    from standin_learner import NearestNeighbourLearner

    ep = tiny_episode()
    standin = NearestNeighbourLearner(tuple(ep.stream_x.shape[2:]), 12, memory=4)
    engine = StreamEngine({"nn": standin, "t": tiny_learner("transformer")}, ep, EngineConfig(fused_step="uncaptured"))
    next(iter(engine))
    assert engine._fused[0] is None and engine._fused[1] is not None
    kv = engine._fused[1].state
    assert kv.preallocated and kv.capacity == 2 * ep.stream_x.shape[1] and kv.length == 2
    assert int(kv.position) == 2
    with pytest.raises(ValueError, match="fused_step"):
        EngineConfig(fused_step="always").validate(4)


def test_a_step_that_cannot_be_fused_streams_op_by_op(monkeypatch):
    """If building the fused step fails (a capture CUDA refuses), that learner streams op by op: the same
    snapshots as fused_step="off", and no failure for the user."""
    import mclstudio.engine.stream as stream

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    learner = tiny_learner("mamba")
    ep = tiny_episode()
    reference = StreamEngine({"m": learner}, ep, EngineConfig(fused_step="off")).run()
    monkeypatch.setattr(stream, "FusedStep", refuse)
    engine = StreamEngine({"m": learner}, ep, EngineConfig(fused_step="uncaptured"))
    snaps = engine.run()
    assert engine._fused == [None]
    for (ref,), (got,) in zip(reference, snaps):
        assert got.accuracy == ref.accuracy
        np.testing.assert_array_equal(got.predictions, ref.predictions)
        np.testing.assert_array_equal(got.layer_norms, ref.layer_norms)


def test_rows_left_out_as_the_stream_goes_are_the_same_when_computed_later(learners):
    """rows_for: only the named learners get association rows during the stream (the studio computes
    rows only for the learners its map shows); ``rows`` computes another's afterwards, equal to what the
    stream would have given it."""
    ep = tiny_episode()
    config = EngineConfig(rows_queries=(0, 2, 4))
    full = StreamEngine(learners, ep, config).run()
    engine = StreamEngine(learners, ep, config)
    engine.rows_for = {"mamba"}
    some = engine.run()
    due = [i for i in range(len(full)) if engine.rows_due(i)]
    assert due == [1, 3, 5] and [s[0].step for s in full if s[1].rows is not None] == due
    for snaps, ref in zip(some, full):
        assert snaps[1].rows is None and snaps[1].predictions.tolist() == ref[1].predictions.tolist()
        if snaps[0].step in due:
            np.testing.assert_array_equal(snaps[0].rows, ref[0].rows)
    for i in due:
        rows, same = engine.rows(1, i + 1)
        np.testing.assert_array_equal(rows, full[i][1].rows)
        np.testing.assert_array_equal(same, full[i][1].same_class)


def test_several_fused_learners_launched_together_give_the_op_by_op_snapshots(learners):
    """Each step launches every fused learner before collecting any (on a GPU the graphs queue back to
    back): with two learners side by side, every snapshot equals the op-by-op path's, and each learner's
    latency is its own step's."""
    ep = tiny_episode(tasks=4, shots=2)
    runs = {mode: StreamEngine(learners, ep, EngineConfig(fused_step=mode)).run() for mode in ("off", "uncaptured")}
    for ref_snaps, fused_snaps in zip(runs["off"], runs["uncaptured"], strict=True):
        for ref, fused in zip(ref_snaps, fused_snaps, strict=True):
            assert (fused.learner, fused.state_bytes, fused.accuracy) == (ref.learner, ref.state_bytes, ref.accuracy)
            np.testing.assert_array_equal(fused.query_index, ref.query_index)
            np.testing.assert_array_equal(fused.predictions, ref.predictions)
            np.testing.assert_allclose(fused.layer_norms, ref.layer_norms, rtol=1e-5)
            np.testing.assert_array_equal(fused.accuracy_matrix, ref.accuracy_matrix)
            assert fused.latency_s > 0
    assert len({s.latency_s for snaps in runs["uncaptured"] for s in snaps}) > 1
