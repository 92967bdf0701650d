"""The streaming engine: one episode, one or more learners, one example at a time, in lock-step.

For each stream example (x_i, y_i) every learner reads x_i then y_i through its recurrent path
(``step_x``/``step_y``), and the engine yields one :class:`Snapshot` per learner: the step's latency,
the memory the state holds, per-layer state norms and, when asked, the accuracy on the queries of every
task seen so far (read from the current state with ``learner.query``, which leaves it unchanged).

Association rows need every past token. A streaming Mamba state is O(1) and keeps no history, so the
engine does not ask the state for it: it re-runs the learner's parallel path
(``forward(..., with_rows=True)``) on the inputs fed so far. The streaming state itself stays what the
learner makes it (constant for Mamba and the kernel attentions, a growing KV cache for the Transformer).

The engine is a plain generator, no threads: an app runs it in a worker, a command in a loop.
Only classification episodes are supported (accuracy, predicted codes).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mclstudio.choices import EVAL_MODES, FUSED_MODES, ROWS_MODES
from mclstudio.data.episodes import Episode
from mclstudio.data.layout import same_task_tokens, task_ends
from mclstudio.engine.graphs import FusedStep, results_size
from mclstudio.learners.base import Learner, State
from mclstudio.metrics import forgetting, mean_forgetting, per_task_accuracy
from mclstudio.precision import autocast, check_precision
from mclstudio.store.device import learner_device


@dataclass(frozen=True)
class EngineConfig:
    """eval_every: evaluate the queries of the tasks seen so far after every "step", only at the end of
    each "task" (the accuracy matrix is filled at task ends in both cases), or never ("none": timing only).
    rows_queries: indices of the queries (into episode.query_x) whose association rows to compute.
    rows_every: compute those rows at the end of each "task" or after every "step".
    precision: "fp32", or "bf16"/"fp16" mixed precision (``mclstudio.precision``) for every step.
    fused_step: with eval_every "step", how a learner with a fixed-shape state (``fixed_shape_state``)
    steps: "auto" as one CUDA graph (step, every query, norms; ``engine/graphs.py``) on a GPU and op by op
    elsewhere; "off" op by op always; "uncaptured" the graph's body without capturing it (tests, CPU).
    """

    eval_every: str = "step"
    rows_queries: tuple[int, ...] = ()
    rows_every: str = "task"
    precision: str = "fp32"
    fused_step: str = "auto"

    def validate(self, num_queries: int) -> None:
        if self.eval_every not in EVAL_MODES:
            raise ValueError(f"eval_every must be one of {', '.join(EVAL_MODES)}, not {self.eval_every!r}")
        if self.rows_every not in ROWS_MODES:
            raise ValueError(f"rows_every must be one of {', '.join(ROWS_MODES)}, not {self.rows_every!r}")
        if self.fused_step not in FUSED_MODES:
            raise ValueError(f"fused_step must be one of {', '.join(FUSED_MODES)}, not {self.fused_step!r}")
        bad = [q for q in self.rows_queries if not 0 <= q < num_queries]
        if bad:
            raise ValueError(f"rows query index {bad[0]} is out of range (the episode has {num_queries} queries)")


@dataclass
class Snapshot:
    """One learner after one stream example.

    step: 0-based index of the example just read; tokens: tokens read so far (2 * (step + 1)).
    task: the example's task; task_end: it was the last example of its task (a row of the accuracy
    matrix was filled now).
    state_bytes: memory the state holds (``State.nbytes``); layer_norms: (n_layers,) state norms.
    latency_s: seconds for this example's step_x + step_y (op by op: wall time); fused (engine/graphs.py):
    for the step, every query and the norms (on a GPU: the graph's time between two CUDA events).
    accuracy: accuracy on the queries of tasks 0..task, or None when not evaluated at this step.
    query_index: (Q_seen,) indices of those queries; predictions: (Q_seen,) their predicted codes.
    accuracy_matrix: (T, T) A[k, j] = accuracy on task j after learning k + 1 tasks, NaN where unfilled.
    forgetting: (k + 1,) per task after the last filled row k (kept during the next task), or None before
    the first task ends; ``mean_forgetting`` is the one figure every app shows.
    rows: (n_layers, R, tokens) association rows of the chosen queries over the tokens read so far;
    same_class: (R, tokens) 1 where a token (x or y) belongs to the query's task. None unless computed.
    """

    learner: str
    step: int
    tokens: int
    task: int
    task_end: bool
    state_bytes: int
    layer_norms: np.ndarray
    latency_s: float
    accuracy: float | None = None
    query_index: np.ndarray | None = None
    predictions: np.ndarray | None = None
    accuracy_matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    forgetting: np.ndarray | None = None
    rows: np.ndarray | None = None
    same_class: np.ndarray | None = None

    @property
    def mean_forgetting(self) -> float | None:
        """``metrics.mean_forgetting`` after the last finished task (the mean over every task but the
        newest, as ``mclstudio replay`` reports it); None before the first task ends."""
        filled = int(np.isfinite(self.accuracy_matrix).any(axis=1).sum())
        return mean_forgetting(self.accuracy_matrix[:filled, :filled]) if filled else None


def same_class_pattern(stream_task: Tensor, query_task: Tensor) -> np.ndarray:
    """stream_task (n,) task of each example read, query_task (R,) -> (R, 2n) float32:
    1 where token t (x and y interleaved, example t // 2) belongs to the query's task, else 0."""
    return same_task_tokens(stream_task, query_task).float().cpu().numpy()


class StreamEngine:
    """Feeds ``episode`` (batch of one) to ``learners`` (name -> Learner) in lock-step.

    Iterating yields, per stream example, a list with one :class:`Snapshot` per learner (in the order
    given). The learners are put in eval mode; every computation runs under ``torch.inference_mode``
    (no_grad without autograd's bookkeeping: less work per op, and nothing here is differentiated).
    """

    def __init__(
        self,
        learners: Mapping[str, Learner] | Sequence[tuple[str, Learner]],
        episode: Episode,
        config: EngineConfig | None = None,
    ) -> None:
        self.learners: list[tuple[str, Learner]] = list(learners.items() if isinstance(learners, Mapping) else learners)
        if not self.learners:
            raise ValueError("the engine needs at least one learner")
        if episode.batch_size != 1:
            raise ValueError(f"the engine streams one episode at a time, not a batch of {episode.batch_size}")
        if episode.is_regression:
            raise ValueError("the streaming engine handles classification episodes only")
        self.config = config or EngineConfig()
        self.config.validate(episode.query_x.shape[1])
        for name, learner in self.learners:
            vocab = learner.config.y_vocab
            if int(episode.codes.max()) >= vocab:
                raise ValueError(f"learner {name} has {vocab} label codes; the episode uses codes up to "
                                 f"{int(episode.codes.max())} (make the spec's num_codes <= {vocab})")
        device = learner_device(self.learners[0][1])
        check_precision(self.config.precision, device)  # one line, before any step, if it cannot run here
        self.episode = episode.to(device)
        self.tasks = episode.tasks
        self.num_examples = episode.stream_x.shape[1]
        # The last stream example of each task: where a row of the accuracy matrix is filled.
        self._task_end = task_ends(self.episode.stream_task).tolist()
        self._rows_index = torch.tensor(self.config.rows_queries, dtype=torch.long, device=device)
        # Host copies of what the fused path compares its predictions with (engine/graphs.py)
        self._stream_task = self.episode.stream_task.cpu().numpy()
        self._query_task = self.episode.query_task.cpu().numpy()
        self._query_y = self.episode.query_y[0].cpu().numpy()
        # The learners whose association rows are computed as the stream goes (None: every one). An app
        # that shows only some may leave the others out, and compute theirs later with ``rows`` should it
        # need them (rows depend only on the stream read so far): the studio, for the learners its map
        # does not show (recording/playback.py).
        self.rows_for: set[str] | None = None

    def __iter__(self) -> Iterator[list[Snapshot]]:
        for _, learner in self.learners:
            learner.eval()
        precision = self.config.precision
        device = self.episode.query_x.device
        # the inputs' embeddings never change during an episode: embed them once
        with torch.inference_mode(), autocast(precision, device):
            # a learner to be fused gets a state preallocated for the whole episode (the Transformer's
            # KV cache: one shape throughout, so that its step can be captured)
            states = [
                learner.empty_state(1, max_tokens=2 * self.num_examples if self._fuses(learner) else None)
                for _, learner in self.learners
            ]
            self._query_embeddings = [learner.embedding.embed_x(self.episode.query_x) for _, learner in self.learners]
            # the stream's, for the association rows (the steps embed their own x, inside the timed step)
            self._stream_embeddings = (
                [learner.embedding.embed_x(self.episode.stream_x) for _, learner in self.learners]
                if self.config.rows_queries else []
            )
            self._fused = self._fused_steps(states)
        matrices = [np.full((self.tasks, self.tasks), np.nan) for _ in self.learners]
        for i in range(self.num_examples):
            # inference mode and autocast per step, not around the loop: a generator's context would
            # leak into its caller.
            with torch.inference_mode(), autocast(precision, device):
                # every fused step first (on a GPU the graphs queue back to back), then one copy of all
                # their results to the host, then the snapshots
                if any(fused is not None for fused in self._fused):
                    self._step_x.copy_(self.episode.stream_x[:, i])
                    self._step_y.copy_(self.episode.stream_y[:, i])
                    for fused in self._fused:
                        if fused is not None:
                            fused.launch()
                    # the step's one copy (and wait); a copy on the CPU too: the snapshots keep views of it
                    self._fused_host = self._fused_out.to("cpu", copy=True).numpy()
                snaps = [
                    self._step(i, name, learner, states, k, matrices[k])
                    for k, (name, learner) in enumerate(self.learners)
                ]
            yield snaps

    def run(self) -> list[list[Snapshot]]:
        """Every step at once (tests and batch use); the same snapshots iteration yields."""
        return list(self)

    def _fuses(self, learner: Learner) -> bool:
        """Whether the learner steps through a FusedStep (see EngineConfig.fused_step)."""
        mode = self.config.fused_step
        if mode == "off" or self.config.eval_every != "step" or not learner.fixed_shape_state:
            return False
        return mode != "auto" or self.episode.query_x.is_cuda

    def _fused_steps(self, states: list[State]) -> list[FusedStep | None]:
        """Each learner's FusedStep, or None where it takes the op-by-op path (see EngineConfig.fused_step).
        They read one pair of input buffers (``_step_x``, ``_step_y``) and write their results into
        slices of one buffer (``_fused_out``), so that a step copies the example in once and every result
        out once."""
        ep, capture = self.episode, self.config.fused_step == "auto"
        self._step_x, self._step_y = ep.stream_x[:, 0].clone(), ep.stream_y[:, 0].clone()
        sizes = [results_size(states[k], self._query_embeddings[k]) if self._fuses(learner) else 0
                 for k, (_, learner) in enumerate(self.learners)]
        self._fused_out = torch.zeros(sum(sizes), dtype=torch.float32, device=ep.query_x.device)
        self._fused_slices: list[slice] = []
        steps: list[FusedStep | None] = []
        for k, (_, learner) in enumerate(self.learners):
            start = sum(sizes[:k])
            self._fused_slices.append(slice(start, start + sizes[k]))
            if not sizes[k]:
                steps.append(None)
                continue
            try:
                steps.append(FusedStep(learner, states[k], self._step_x, self._step_y, self._query_embeddings[k],
                                       capture=capture, out=self._fused_out[start : start + sizes[k]]))
            except RuntimeError:  # a step CUDA cannot capture: the op-by-op path is the reference, so stream on it
                steps.append(None)
        return steps

    def _step(
        self, i: int, name: str, learner: Learner, states: list[State], k: int, matrix: np.ndarray
    ) -> Snapshot:
        """Learner k after stream example i. Op by op: step_x, step_y, then the queries of the tasks seen
        so far (read from the state, left unchanged) and the norms, brought to the host in one copy. Fused:
        the results of the step ``__iter__`` launched (every query answered; the seen ones kept)."""
        ep = self.episode
        task, task_end = int(self._stream_task[i]), bool(self._task_end[i])  # host copies: no device sync
        cfg = self.config
        evaluate = cfg.eval_every == "step" or (cfg.eval_every == "task" and task_end)
        seen = np.flatnonzero(self._query_task <= task)  # the queries of the tasks seen so far
        fused = self._fused[k]
        if fused is not None:
            answers, norms, latency = fused.results(self._fused_host[self._fused_slices[k]])
            predictions: np.ndarray | None = answers[seen]
            state_bytes = fused.state.nbytes()
        else:
            t0 = time.perf_counter()
            state = learner.step_y(learner.step_x(states[k], ep.stream_x[:, i]), ep.stream_y[:, i])
            latency = time.perf_counter() - t0
            states[k] = state
            state_bytes = state.nbytes()
            host = state.layer_norms()[0].float()
            if evaluate:
                index = torch.from_numpy(seen).to(ep.query_x.device)
                logits = learner.answer_embedded(state, self._query_embeddings[k][:, index]).logits  # (1, Q_seen, V)
                host = torch.cat([logits.argmax(-1)[0].to(torch.float32), host])
            out = host.cpu().numpy()  # the step's one device-to-host copy
            predictions = out[: len(seen)].astype(np.int64) if evaluate else None
            norms = out[len(seen):] if evaluate else out
        snap = Snapshot(learner=name, step=i, tokens=2 * (i + 1), task=task, task_end=task_end,
                        state_bytes=state_bytes, layer_norms=norms, latency_s=latency, accuracy_matrix=matrix)
        if evaluate and predictions is not None:
            correct = predictions == self._query_y[seen]
            if task_end:
                matrix[task, : task + 1] = per_task_accuracy(
                    torch.from_numpy(correct), torch.from_numpy(self._query_task[seen]), task + 1
                ).numpy()
            snap.accuracy = float(correct.astype(np.float32).mean())
            snap.query_index, snap.predictions = seen, predictions
        snap.accuracy_matrix = matrix.copy()
        done = task + 1 if task_end else task  # rows filled: tasks finished so far
        if done and not np.isnan(matrix[done - 1, 0]):
            snap.forgetting = forgetting(matrix[:done, :done])
        if self.rows_due(i) and (self.rows_for is None or name in self.rows_for):
            snap.rows, snap.same_class = self.rows(k, i + 1)
        return snap

    def rows_due(self, i: int) -> bool:
        """Whether association rows are computed after step i (rows_every, at task ends or every step)."""
        cfg = self.config
        return bool(cfg.rows_queries) and (cfg.rows_every == "step" or bool(self._task_end[i]))

    def rows(self, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Association rows of the configured queries for learner k after the first n examples:
        (n_layers, R, 2n) rows from the parallel path on the inputs fed so far, and (R, 2n) same-class.
        Call it once iteration has started (it reads the embeddings made then), during or after it."""
        ep, learner = self.episode, self.learners[k][1]
        stream_x, query_x = self._stream_embeddings[k][:, :n], self._query_embeddings[k][:, self._rows_index]
        with torch.inference_mode(), autocast(self.config.precision, ep.query_x.device):
            out = learner(stream_x, ep.stream_y[:, :n], query_x, with_rows=True, embedded=True)
        assert out.rows is not None
        rows = torch.stack([r[0] for r in out.rows]).float().cpu().numpy()  # (n_layers, R, 2n)
        return rows, same_class_pattern(ep.stream_task[:n], ep.query_task[self._rows_index])


@dataclass
class EpisodeTrace:
    """One learner's whole episode, as arrays (what a recording stores). N examples, T tasks, Q queries.

    accuracy (N,): running accuracy, NaN where not evaluated; state_bytes (N,); latency_s (N,);
    layer_norms (N, n_layers); eval_steps (E,) the steps evaluated; predictions (E, Q) int16 predicted
    codes, -1 for queries of tasks not yet seen; accuracy_matrix (T, T); rows_steps (K,) the steps with
    association rows; rows (K, n_layers, R, 2N) float16, zero beyond the tokens read at that step.
    """

    learner: str
    num_examples: int
    num_queries: int
    tasks: int
    accuracy: np.ndarray
    state_bytes: np.ndarray
    latency_s: np.ndarray
    layer_norms: np.ndarray
    eval_steps: list[int] = field(default_factory=list)
    predictions: list[np.ndarray] = field(default_factory=list)
    accuracy_matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    rows_steps: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    @staticmethod
    def empty(learner: str, engine: StreamEngine, n_layers: int) -> EpisodeTrace:
        n = engine.num_examples
        return EpisodeTrace(
            learner=learner,
            num_examples=n,
            num_queries=engine.episode.query_x.shape[1],
            tasks=engine.tasks,
            accuracy=np.full(n, np.nan),
            state_bytes=np.zeros(n, dtype=np.int64),
            latency_s=np.zeros(n),
            layer_norms=np.zeros((n, n_layers), dtype=np.float32),
            accuracy_matrix=np.full((engine.tasks, engine.tasks), np.nan),
        )

    def add(self, snap: Snapshot) -> None:
        i = snap.step
        self.state_bytes[i] = snap.state_bytes
        self.latency_s[i] = snap.latency_s
        self.layer_norms[i] = snap.layer_norms
        if snap.accuracy is not None:
            self.accuracy[i] = snap.accuracy
            row = np.full(self.num_queries, -1, dtype=np.int16)
            assert snap.query_index is not None and snap.predictions is not None
            row[snap.query_index] = snap.predictions
            self.eval_steps.append(i)
            self.predictions.append(row)
        if snap.task_end:
            self.accuracy_matrix = snap.accuracy_matrix
        if snap.rows is not None:
            self.add_rows(i, snap.rows)

    def add_rows(self, step: int, rows: np.ndarray) -> None:
        """The association rows (n_layers, R, tokens) after ``step``, zero-padded to 2N tokens and kept in
        step order (rows computed later, ``StreamEngine.rows_for``, may come after later steps')."""
        padded = np.zeros((*rows.shape[:2], 2 * self.num_examples), dtype=np.float16)
        padded[..., : rows.shape[-1]] = rows
        at = bisect.bisect(self.rows_steps, step)
        self.rows_steps.insert(at, step)
        self.rows.insert(at, padded)

    def predictions_array(self) -> np.ndarray:
        """(E, Q) int16."""
        return np.stack(self.predictions) if self.predictions else np.zeros((0, self.num_queries), dtype=np.int16)

    def rows_array(self, n_layers: int, n_rows: int) -> np.ndarray:
        """(K, n_layers, R, 2N) float16."""
        if self.rows:
            return np.stack(self.rows)
        return np.zeros((0, n_layers, n_rows, 2 * self.num_examples), dtype=np.float16)

    @property
    def final_accuracy(self) -> float:
        """Accuracy on all queries after the whole stream (the last row of the accuracy matrix, averaged
        over queries; equal to the running accuracy at the last step)."""
        return float(self.accuracy[-1]) if not np.isnan(self.accuracy[-1]) else float(np.nanmean(self.accuracy_matrix[-1]))

    @property
    def forgetting(self) -> np.ndarray:
        """(T,) per task after the whole stream."""
        return forgetting(self.accuracy_matrix)


def run_episode(
    learners: Mapping[str, Learner] | Sequence[tuple[str, Learner]],
    episode: Episode,
    config: EngineConfig | None = None,
    on_step: Callable[[list[Snapshot]], None] | None = None,
) -> dict[str, EpisodeTrace]:
    """Stream a whole episode and gather each learner's :class:`EpisodeTrace`."""
    engine = StreamEngine(learners, episode, config)
    traces = {name: EpisodeTrace.empty(name, engine, learner.config.n_layers) for name, learner in engine.learners}
    for snaps in engine:
        for snap in snaps:
            traces[snap.learner].add(snap)
        if on_step is not None:
            on_step(snaps)
    return traces
