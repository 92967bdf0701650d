"""A streaming step as one replayable unit: read (x_i, y_i), answer every query, take the state norms.

On a GPU a learner of the studio's size spends its step launching small kernels from Python (tens of
microseconds each, hundreds per step), not computing. For a learner whose memory keeps one shape and whose
step reads no Python-level counter (``Learner.fixed_shape_state``: Mamba, Longhorn, ProtoNet; the Linear
Transformer and Performer, whose memory is updated in place and position kept on the device; the
Transformer, whose KV cache the engine preallocates for the episode's length, masked beyond a position kept
on the device), the whole step is captured once as a CUDA graph and replayed: the state's own tensors are
the graph's static buffers (the step's new state is copied back into them inside the graph), and every query
is answered each step (queries never see each other, so the seen ones' answers are the same as answering
them alone; the engine keeps the seen ones). The learners of one engine share their input buffers and write
their results into one buffer: per step, one copy of the example in and one device-to-host copy out carry
every learner's predictions and norms.

Off CUDA (or with ``capture=False``) the same body runs eagerly: that is how the tests check it on a CPU.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from mclstudio.learners.base import Learner, State


def results_size(state: State, query_embeddings: Tensor) -> int:
    """Q + n_layers: the float32 results of one fused step (every query's prediction, then the norms)."""
    return query_embeddings.shape[1] + state.layer_norms().shape[1]


class FusedStep:
    """One learner's step + queries + norms, replayed in place on ``state`` (whose tensors it owns).

    state: the empty state to stream from, made with ``max_tokens`` for the whole stream (its tensors
    become the static buffers); x (1, *x_shape) and y (1,): the input buffers the step reads (the caller
    copies each example into them; several FusedSteps may share them); query_embeddings (1, Q, D): every
    query, embedded; out: a (Q + n_layers,) float32 buffer the step writes its results into (several
    FusedSteps may write into slices of one buffer, brought to the host with one copy; ``results_size``), or
    None for one of its own.

    ``launch`` starts a step on what x and y hold (on a GPU: queues the graph and returns); ``results``
    reads its predictions (Q,) int64, norms (n_layers,) float32 and time from a host copy of ``out`` made
    after it (the engine copies every learner's results at once). ``state`` then holds the memory after
    the example."""

    def __init__(
        self, learner: Learner, state: State, x: Tensor, y: Tensor, query_embeddings: Tensor,
        capture: bool = True, out: Tensor | None = None,
    ) -> None:
        self.learner, self.state, self.queries = learner, state, query_embeddings
        self.x, self.y = x, y
        self.n_queries = query_embeddings.shape[1]
        self.out = out if out is not None else x.new_empty(results_size(state, query_embeddings), dtype=torch.float32)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.seconds = 0.0  # the last step's time (``results``)
        self.started: torch.cuda.Event | None = None
        self.finished: torch.cuda.Event | None = None
        if capture and x.is_cuda:
            self._capture()
            self.started, self.finished = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def _body(self) -> None:
        """Read (self.x, self.y) into self.state's buffers; answer every query; fill self.out (Q + n_layers,)."""
        learner, state = self.learner, self.state
        new = learner.step_y(learner.step_x(state, self.x), self.y)
        for buffer, value in zip(state.tensors(), new.tensors()):
            if value is not buffer:
                buffer.copy_(value)
        predictions = learner.answer_embedded(state, self.queries).logits.argmax(-1)[0]  # (Q,)
        self.out.copy_(torch.cat([predictions.to(torch.float32), state.layer_norms()[0].float()]))

    def _capture(self) -> None:
        """Warm up on a side stream (as CUDA graphs require), capture, and put the state back to empty.
        The state is put back after each warm-up step too, so that even a one-example stream's
        preallocated memory never holds more tokens than it was made for."""
        kept = self.state.tensors() + self.state.counters()
        empty, length = [t.clone() for t in kept], self.state.length

        def restore() -> None:
            for buffer, value in zip(kept, empty):
                buffer.copy_(value)
            self.state.length = length  # (a step that updates its state object in place advanced it)

        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._body()
                    restore()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._body()
        finally:  # captured or not, the stream starts from the empty state
            restore()

    def launch(self) -> None:
        """Start reading the example that x and y hold: on a GPU the graph is queued and this returns at
        once (``results`` of a later host copy of ``out`` holds what it computed)."""
        length = self.state.length
        if self.graph is not None:
            assert self.started is not None and self.finished is not None
            self.started.record()
            self.graph.replay()
            self.finished.record()
        else:
            t0 = time.perf_counter()
            self._body()
            if self.x.is_cuda:  # (uncaptured on a GPU: the time of the work, not of its launch)
                torch.cuda.synchronize(self.x.device)
            self.seconds = time.perf_counter() - t0
        self.state.length = length + 2  # bookkeeping (whether or not the body advanced it)

    def results(self, host: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """From ``host``, a host copy of ``out`` made after the step: its predictions (Q,) int64, norms
        (n_layers,) float32 and the seconds it took (the graph's time on the GPU between two events, or
        the uncaptured body's wall time)."""
        if self.graph is not None:
            assert self.started is not None and self.finished is not None
            self.seconds = self.started.elapsed_time(self.finished) / 1e3  # both passed: ``out`` was copied after
        return host[: self.n_queries].astype(np.int64), host[self.n_queries:], self.seconds
