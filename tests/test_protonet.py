"""ProtoNet: nearest class mean on the learner's encoder, with hand-made embeddings whose answers are
known; its streaming path, fixed state, anytime queries; and the commands it goes through (train, eval,
record, replay, the studio)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from mclstudio.learners.protonet import EMPTY_LOGIT, ProtoNetConfig, ProtoNetLearner
from mclstudio.learners.registry import build_learner, make_config
from mclstudio.recording import read_recording
from cli_helpers import run_cli
from learner_helpers import inputs, stream_recurrently


ROOT = Path(__file__).resolve().parent.parent


def tiny(d_model: int = 16) -> ProtoNetLearner:
    torch.manual_seed(0)
    model = build_learner(make_config("protonet", d_model=d_model, x_shape=(1, 8, 8), y_vocab=10, encoder_channels=8))
    assert isinstance(model, ProtoNetLearner)
    return model.eval().double()


# Two codes with two examples each, in 2-d: code 3 at (0, 0) and (2, 0) (mean (1, 0)); code 7 at (0, 4)
# and (0, 6) (mean (0, 5)).
STREAM = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]]], dtype=torch.float64)
LABELS = torch.tensor([[3, 3, 7, 7]])
QUERY = torch.tensor([[[1.0, 1.0], [0.0, 4.0]]], dtype=torch.float64)


def test_logits_are_minus_squared_distance_to_each_codes_mean():
    model = tiny(d_model=2)
    out = model(STREAM, LABELS, QUERY, with_rows=True, embedded=True)
    logits = out.logits[0]
    # query (1, 1): 1 from code 3's mean (1, 0), 1 + 16 = 17 from code 7's (0, 5)
    assert logits[0, 3].item() == pytest.approx(-1.0) and logits[0, 7].item() == pytest.approx(-17.0)
    # query (0, 4): 1 + 16 = 17 from code 3, 1 from code 7
    assert logits[1, 3].item() == pytest.approx(-17.0) and logits[1, 7].item() == pytest.approx(-1.0)
    assert logits.argmax(-1).tolist() == [3, 7]
    others = [v for v in range(10) if v not in (3, 7)]
    assert torch.all(logits[:, others] == EMPTY_LOGIT)
    # rows: softmax over the examples of minus the squared distance, half on each token of the pair
    d = torch.tensor([2.0, 2.0, 10.0, 26.0], dtype=torch.float64)  # query (1, 1) to each example
    w = torch.softmax(-d, 0)
    expected = torch.stack([w / 2, w / 2], -1).flatten()
    torch.testing.assert_close(out.rows[0][0, 0], expected)


def test_a_query_boundary_hides_the_later_examples():
    model = tiny(d_model=2)
    out = model(STREAM, LABELS, QUERY, with_rows=True, embedded=True, query_end=torch.tensor([2, 3]))
    # query 0 sees code 3 only; query 1 sees (0, 4) as code 7's only example: distance 0
    assert out.logits[0, 0, 3].item() == pytest.approx(-1.0) and out.logits[0, 0, 7].item() == EMPTY_LOGIT
    assert out.logits[0, 1, 7].item() == pytest.approx(0.0) and out.logits[0, 1, 3].item() == pytest.approx(-17.0)
    assert torch.all(out.rows[0][0, 0, 4:] == 0) and out.rows[0][0, 0].sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(out.rows[0][0, 0, :4], torch.full((4,), 0.25, dtype=torch.float64))


def test_streaming_equals_parallel_and_the_state_is_fixed():
    model = tiny()
    sx, sy, qx = inputs(N=6, Q=4)
    parallel = model(sx, sy, qx).logits
    state = stream_recurrently(model, sx, sy)
    torch.testing.assert_close(model.query(state, qx), parallel, rtol=1e-12, atol=1e-9)
    assert state.length == 12 and state.counts.sum().item() == 2 * 6
    short = stream_recurrently(model, sx[:, :2], sy[:, :2])
    assert short.nbytes() == state.nbytes() == 2 * (10 * 16 + 10) * 8  # float64 sums and counts
    assert state.layer_norms().shape == (2, 1)
    torch.testing.assert_close(state.layer_norms()[:, 0], state.sums.flatten(1).norm(dim=1))


def test_every_trainable_parameter_gets_a_gradient():
    """(DDP needs it.) The label table and head take no part and are frozen; the encoder learns."""
    model = tiny().train()
    sx, sy, qx = inputs(N=6, Q=4)
    out = model(sx, sy, qx, with_rows=True, query_end=torch.tensor([6, 2, 4, 6]))
    (out.logits.logsumexp(-1).sum() + out.rows[0].sum()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("embedding.x_encoder") for n, _ in trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)


def test_config_refuses_layers_and_regression():
    with pytest.raises(ValueError, match="n_layers"):
        ProtoNetConfig(n_layers=4)
    with pytest.raises(ValueError, match="y_vocab"):
        ProtoNetConfig(y_vocab=0, y_dim=3)


def test_protonet_trains_evaluates_records_and_replays(tmp_path, capsys):
    ckpt = tmp_path / "protonet.pt"
    code, out, err = run_cli(capsys, "train", "--model", "protonet", "--tasks", "3", "--shots", "2", "--test-shots", "1",
                             "--steps", "3", "--batch-size", "2", "--log-every", "1", "--d-model", "16",
                             "--encoder-channels", "8", "--y-vocab", "12", "--device", "cpu", "-o", ckpt)
    assert code == 0 and f"saved {ckpt}" in out, err
    code, out, err = run_cli(capsys, "eval", ckpt, "--episodes", "4", "--batch-size", "4", "--json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["model"] == "protonet"
    rec = tmp_path / "run.h5"
    code, out, err = run_cli(capsys, "record", ckpt, "--episodes", "1", "--tasks", "3", "--shots", "2", "-o", rec)
    assert code == 0, err
    trace = read_recording(rec).episodes[0].traces["protonet"]
    assert trace.state_bytes[0] == trace.state_bytes[-1] > 0  # fixed size
    code, out, err = run_cli(capsys, "replay", rec, "--json")
    assert code == 0, err
    assert json.loads(out)["learners"][0]["learner"] == "protonet"
    code, out, err = run_cli(capsys, "train", "--model", "protonet", "--layers", "3", "--steps", "1", "--device", "cpu",
                             "-o", tmp_path / "bad.pt")
    assert code != 0 and err.strip().startswith("error:") and "n_layers" in err and "Traceback" not in err


def test_the_studio_runs_protonet_beside_mamba(tmp_path):
    from mclstudio.tui.cli import build_open_app
    from mclstudio.tui.headless import settle, start_live
    from mclstudio.tui.widgets import AccuracyPanel

    torch.manual_seed(0)
    model = build_learner(make_config("protonet", d_model=128, x_shape=(1, 32, 32), y_vocab=100))
    from mclstudio.store.checkpoint import save_checkpoint

    ckpt = tmp_path / "protonet.pt"
    save_checkpoint(ckpt, model, {"dataset": "omniglot-mini", "steps": 0})

    async def go() -> None:
        app = build_open_app([str(ROOT / "checkpoints" / "mamba.pt"), str(ckpt)], tasks=3, shots=2, seed=0,
                             device="cpu", record_dir=tmp_path, show_timing=False)
        async with app.run_test(size=(160, 50)) as pilot:
            await start_live(pilot)
            await pilot.press("n", "n")  # task 1 ends: accuracy and association rows for both
            await settle(pilot, 2)
            assert app.frames_received == 2
            rows, same, step = app.maps["protonet"]  # its association rows reached the studio
            assert step == 1 and rows.shape == (1, len(same), 4)
            assert "protonet" in str(app.get_screen("live").query_one(AccuracyPanel).content)

    asyncio.run(go())
