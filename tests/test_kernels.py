"""The fused Triton inference kernels (mclstudio/learners/kernels) against the PyTorch code they replace,
run on the CPU through Triton's interpreter (the GPU check is in benchmarks/gpu_throughput.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mclstudio.learners.kernels import TRITON_IMPORT_ERROR


@pytest.fixture(scope="module")
def errors() -> dict[str, float]:
    if TRITON_IMPORT_ERROR:
        pytest.skip(f"Triton does not import here: {TRITON_IMPORT_ERROR}")
    script = Path(__file__).with_name("triton_interpreted.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fused_blocks_match_modules(errors: dict[str, float]) -> None:
    blocks = {k: v for k, v in errors.items() if k.startswith("block")}
    assert len(blocks) == 6
    assert max(blocks.values()) < 1e-4, blocks


def test_fused_blocks_write_channels_last(errors: dict[str, float]) -> None:
    assert all(v == 0.0 for k, v in errors.items() if k.startswith("channels-last"))


def test_fused_encoder_matches_modules(errors: dict[str, float]) -> None:
    encoders = {k: v for k, v in errors.items() if k.startswith("encoder")}
    assert len(encoders) == 3
    assert max(encoders.values()) < 1e-4, encoders


def test_fused_blocks_decline_shapes_they_cannot_tile(errors: dict[str, float]) -> None:
    assert errors["declines odd sides"] == 0.0
    assert errors["declines 3 channels a group"] == 0.0


def test_fused_read_matches_diagonal_read(errors: dict[str, float]) -> None:
    reads = {k: v for k, v in errors.items() if k.startswith("read")}
    assert len(reads) == 2
    assert max(reads.values()) < 1e-5, reads


def test_fused_conv_token_matches_module(errors: dict[str, float]) -> None:
    tokens = {k: v for k, v in errors.items() if k.startswith("conv token")}
    assert len(tokens) == 2
    # bf16 outputs differ by at most one rounding of the same float32 value
    assert max(tokens.values()) < 1e-2, tokens
    assert tokens["conv token b2 q37 d40 float32"] < 1e-5, tokens
    assert all(v == 0.0 for k, v in errors.items() if k.startswith("dtype conv token"))


def test_fused_rows_and_their_gradients_match_the_einsum(errors: dict[str, float]) -> None:
    rows = {k: v for k, v in errors.items() if k.startswith("rows")}
    assert len(rows) == 12  # two shapes: the rows and the gradients of the queries' delta and C, delta, B and A
    assert max(rows.values()) < 1e-5, rows
    longhorn = {k: v for k, v in errors.items() if k.startswith("longhorn rows")}
    assert len(longhorn) == 10  # two shapes: the rows and the gradients of the queries' beta and C, beta and B
    assert max(longhorn.values()) < 2e-5, longhorn


def test_fused_recall_and_its_gradients_match_pytorch(errors: dict[str, float]) -> None:
    recall = {k: v for k, v in errors.items() if k.startswith("recall")}
    assert len(recall) == 20  # two shapes, a shared state or one per query: values, gradients of h, delta, C, A
    assert max(recall.values()) < 1e-5, recall


def test_fused_diagonal_scan_and_its_gradients_match_the_recurrence(errors: dict[str, float]) -> None:
    scans = {k: v for k, v in errors.items() if k.startswith("diagonal scan")}
    assert len(scans) == 28  # two shapes, last state or states at ends: outputs, and six inputs' gradients
    assert max(scans.values()) < 1e-5, scans


def test_switch_turns_the_kernels_off_and_back_on() -> None:
    import torch

    from mclstudio.learners.kernels import fused_kernels
    from mclstudio.learners.kernels.conv_block import fused_block_supported
    from mclstudio.learners.kernels.conv_token import fused_conv_token_supported
    from mclstudio.learners.kernels.mamba_read import fused_read_supported

    if TRITON_IMPORT_ERROR:
        pytest.skip(f"Triton does not import here: {TRITON_IMPORT_ERROR}")
    images, state = torch.zeros(1, 1, 8, 8), torch.zeros(1, 32, 16)
    queries = torch.zeros(1, 3, 32)
    assert fused_block_supported(images, 8, 16) and fused_read_supported(state) and fused_conv_token_supported(queries)
    with fused_kernels(False):
        assert not fused_block_supported(images, 8, 16)
        assert not fused_read_supported(state)
        assert not fused_conv_token_supported(queries)
    assert fused_block_supported(images, 8, 16) and fused_read_supported(state) and fused_conv_token_supported(queries)
