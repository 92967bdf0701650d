"""--precision fp32|bf16|fp16: what autocast keeps in float32, bf16 against fp32 on tiny learners, the
option on eval, record and open, one-line errors, and recordings that carry the precision and verify at it."""

from __future__ import annotations

import asyncio
import json

import h5py
import pytest
import torch

import mclstudio.engine.stream as stream_module
import mclstudio.precision as precision_module
from mclstudio.data import get_source
from mclstudio.data.episodes import EpisodeSpec
from mclstudio.engine import EngineConfig, run_episode
from mclstudio.learners.registry import build_learner, make_config
from mclstudio.precision import autocast, check_precision
from mclstudio.recording import read_recording
from mclstudio.store.checkpoint import save_checkpoint
from mclstudio.training.evaluate import Setting, evaluate_setting
from cli_helpers import one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread

MODELS = ["mamba", "transformer", "linear_transformer", "performer"]
TINY = {"d_model": 16, "n_layers": 2, "encoder_channels": 8, "y_vocab": 12}
SPEC = EpisodeSpec(tasks=3, train_shots=2, test_shots=2, seed=7, num_codes=12)


def tiny(model: str, seed: int = 0):
    torch.manual_seed(seed)
    extra = {} if model == "mamba" else {"n_heads": 2, "d_ff": 32}
    return build_learner(make_config(model, **TINY, **extra)).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("precision")
    for seed, model in enumerate(("mamba", "transformer")):
        save_checkpoint(d / f"{model}.pt", tiny(model, seed), {"episode_spec": SPEC.to_dict()})  # eval's setting
    return [str(d / "mamba.pt"), str(d / "transformer.pt")]


# ---- what mixed precision computes --------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_bf16_agrees_with_fp32_on_a_tiny_learner(model):
    learner = tiny(model)
    ep = get_source("omniglot-mini").batch([SPEC.with_seed(s) for s in range(4)])
    with torch.no_grad():
        ref = learner(ep.stream_x, ep.stream_y, ep.query_x).logits
        with autocast("bf16", "cpu"):
            low = learner(ep.stream_x, ep.stream_y, ep.query_x).logits
    assert low.dtype == torch.bfloat16  # autocast really ran the head in bf16
    rel = ((low.float() - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.03, rel  # bf16 keeps ~3 significant digits (measured: 0.6-0.9% here)
    # evaluation at bf16: the same episodes, an accuracy within a few queries of fp32's
    setting = Setting("trained", SPEC)
    source = get_source("omniglot-mini")
    acc = {p: evaluate_setting(learner, source, setting, episodes=4, batch_size=4, precision=p).mean
           for p in ("fp32", "bf16")}
    assert abs(acc["bf16"] - acc["fp32"]) <= 0.1, acc


def test_accumulating_states_stay_float32_and_stored_activations_go_low():
    with torch.no_grad(), autocast("bf16", "cpu"):
        mamba = tiny("mamba").empty_state(1)
        kv = tiny("transformer").empty_state(1)
        matrix = tiny("linear_transformer").empty_state(1)
    assert mamba.ssm[0].dtype == torch.float32 and mamba.conv[0].dtype == torch.bfloat16
    assert kv.keys[0].dtype == torch.bfloat16
    assert matrix.S[0].dtype == torch.float32 and matrix.z[0].dtype == torch.float32
    # so the streamed Transformer's KV cache takes half the bytes, and its norms stay finite
    episode = get_source("omniglot-mini").episode(SPEC)
    learner = tiny("transformer")
    traces = {p: run_episode([("t", learner)], episode, EngineConfig(precision=p))["t"] for p in ("fp32", "bf16")}
    assert traces["bf16"].state_bytes[-1] * 2 == traces["fp32"].state_bytes[-1]
    assert torch.isfinite(torch.from_numpy(traces["bf16"].layer_norms)).all()


def test_check_precision_one_line_reasons(monkeypatch):
    with pytest.raises(ValueError, match="one of fp32, bf16, fp16"):
        check_precision("fp64")
    assert check_precision("fp32", "cpu") == "fp32"
    precision_module._unsupported.cache_clear()
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match="fp16 needs torch.autocast"):
        check_precision("fp16", "cpu")
    precision_module._unsupported.cache_clear()


# ---- the commands -------------------------------------------------------------------------------
def test_eval_at_bf16_and_bad_values(checkpoints, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, "eval", checkpoints[0], "--episodes", "2", "--batch-size", "2", "--noise", "0.5",
                           "--device", "cpu", "--precision", "bf16", "--json")
    assert code == 0 and json.loads(out)["precision"] == "bf16"
    for command in (["eval", checkpoints[0]], ["record", checkpoints[0]], ["open", checkpoints[0]]):
        one_line_error(*run_cli(capsys, *command, "--precision", "fp64")[::2], "fp32, bf16, fp16")
    # a precision the device cannot run: one line, before any work
    precision_module._unsupported.cache_clear()
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    code, _, err = run_cli(capsys, "eval", checkpoints[0], "--device", "cpu", "--precision", "fp16")
    one_line_error(code, err, "fp16 needs torch.autocast")
    precision_module._unsupported.cache_clear()


def test_open_takes_the_precision_and_shows_it(checkpoints, capsys, monkeypatch, tmp_path):
    import mclstudio.tui.cli as tui_cli

    seen = {}
    monkeypatch.setattr(tui_cli, "open_studio", lambda paths, **kw: seen.update(kw))
    assert run_cli(capsys, "open", checkpoints[0], "--precision", "fp16")[0] == 0
    assert seen["precision"] == "fp16"

    app = tui_cli.build_open_app([checkpoints[0]], tasks=3, shots=2, device="cpu", record_dir=tmp_path,
                                 precision="bf16")

    async def go() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            assert app.sub_title.endswith("· bf16")
            await pilot.press("enter")  # the picker starts the episode
            for _ in range(200):
                if app.feed is not None:
                    break
                await pilot.pause(0.05)
            assert app.feed.config.precision == "bf16"  # the stream (and its recordings) run at it
            assert app.sub_title.endswith("· bf16")

    asyncio.run(go())


def test_recordings_carry_the_precision_and_verify_at_it(checkpoints, capsys, monkeypatch, tmp_path):
    out = str(tmp_path / "run.h5")
    code, text, _ = run_cli(capsys, "record", *checkpoints, "--episodes", "1", "--tasks", "3", "--shots", "2",
                            "--test-shots", "2", "--precision", "bf16", "-o", out)
    assert code == 0 and "at bf16" in text
    with h5py.File(out, "r") as f:
        assert f.attrs["precision"] == "bf16" and f.attrs["schema_version"] == 1
    assert read_recording(out).engine_config.precision == "bf16"

    used = []
    real = stream_module.autocast
    monkeypatch.setattr(stream_module, "autocast", lambda p, device: used.append(p) or real(p, device))
    code, text, _ = run_cli(capsys, "replay", out, "--verify", "--json")
    report = json.loads(text)
    assert code == 0 and report["verify"]["ok"] and report["precision"] == "bf16"
    assert set(used) == {"bf16"}

    # a file written before the attribute existed reads as fp32 (the schema stays version 1)
    with h5py.File(out, "a") as f:
        del f.attrs["precision"]
    assert read_recording(out).engine_config.precision == "fp32"
