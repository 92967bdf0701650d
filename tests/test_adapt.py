"""Low-rank adapters: shifted domains, the LoRA parametrization, `mclstudio adapt`, adapter files, and
--adapter on eval / record / replay --verify. Tiny random checkpoints, a couple of adaptation steps."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from mclstudio.cli.main import main
from mclstudio.data import EpisodeSpec, get_source
from mclstudio.learners.lora import add_lora, find_targets, merge_lora
from mclstudio.learners.registry import build_learner, make_config
from mclstudio.training.adapt import AdaptConfig, adapt
from mclstudio.store.adapters import AdapterError, load_adapter, load_learners
from mclstudio.store.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from mclstudio.training.loop import meta_train_step, warmup_halving_schedule
from cli_helpers import one_line_error, run_cli
from learner_helpers import inputs, stream_recurrently


TINY = {"d_model": 16, "n_layers": 1, "encoder_channels": 8, "y_vocab": 12}
EPISODE = ["--tasks", "3", "--shots", "1", "--test-shots", "1"]


def tiny_learner(model: str, seed: int = 0, x_shape: tuple[int, ...] = (1, 32, 32)):
    torch.manual_seed(seed)
    extra = {} if model == "mamba" else {"n_heads": 2, "d_ff": 32}
    return build_learner(make_config(model, **TINY, **extra, x_shape=x_shape))


def save_tiny(path: Path, model: str, seed: int = 0) -> Path:
    spec = EpisodeSpec(tasks=3, train_shots=1, test_shots=1, num_codes=12)
    save_checkpoint(path, tiny_learner(model, seed), {"episode_spec": spec.to_dict()})
    return path


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A tiny Mamba checkpoint and an adapter trained on it for 3 steps through the CLI."""
    d = tmp_path_factory.mktemp("adapt")
    ckpt = save_tiny(d / "mamba.pt", "mamba")
    sha = file_sha256(ckpt)
    out = d / "mamba-inv.pt"
    main(["adapt", str(ckpt), "--dataset", "omniglot-mini:inverted", "--rank", "2", "--steps", "3",
          "--batch-size", "2", "--lr", "0.05", "--warmup", "0", "--device", "cpu", "-o", str(out), *EPISODE])
    return ckpt, out, sha


# ---- data -------------------------------------------------------------------------------------------
def test_shifted_domains_keep_classes_and_split():
    plain = get_source("omniglot-mini")
    inverted, noisy = get_source("omniglot-mini:inverted"), get_source("omniglot-mini:noisy")
    assert torch.equal(inverted.images, 255 - plain.images)
    assert noisy.images.dtype == torch.uint8 and not torch.equal(noisy.images, plain.images)
    spec = EpisodeSpec(tasks=4, train_shots=2, test_shots=1, seed=5)
    a, b = plain.episode(spec), inverted.episode(EpisodeSpec(**{**spec.to_dict(), "dataset": "omniglot-mini:inverted"}))
    assert torch.equal(a.train_sample_ids, b.train_sample_ids) and torch.equal(a.stream_y, b.stream_y)
    assert torch.allclose(b.stream_x, -a.stream_x, atol=1e-6)  # 255 - x scales to -x
    assert noisy.num_classes("test") == plain.num_classes("test")
    with pytest.raises(ValueError, match="not an image dataset"):
        get_source("sine:noisy")


# ---- the LoRA parametrization ----------------------------------------------------------------------
def test_targets_per_model_never_include_the_tied_head():
    mamba, transformer = tiny_learner("mamba"), tiny_learner("transformer")
    assert find_targets(mamba) == ["layers.0.mixer.in_proj", "layers.0.mixer.x_proj", "layers.0.mixer.out_proj"]
    assert "layers.0.mixer.dt_proj" in find_targets(mamba, ssm=True)
    assert find_targets(transformer) == ["layers.0.attn.qkv", "layers.0.attn.out", "layers.0.mlp.0", "layers.0.mlp.2"]
    assert "embedding.x_encoder.project" in find_targets(transformer, encoder=True)
    with pytest.raises(ValueError, match="no SSM projections"):
        find_targets(transformer, ssm=True)
    for model in (mamba, transformer):
        assert all("head" not in t and "y_embed" not in t for t in find_targets(model, ssm=model is mamba, encoder=True))


def test_training_moves_only_the_adapters_and_every_path_sees_them():
    learner = tiny_learner("mamba", x_shape=(1, 8, 8)).double()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    sx, sy, qx = inputs()
    base_logits = learner(sx, sy, qx).logits
    learner.requires_grad_(False)
    params = add_lora(learner, find_targets(learner, ssm=True), rank=2, alpha=4.0)
    assert torch.equal(learner(sx, sy, qx).logits, base_logits)  # B = 0: an untrained adapter changes nothing
    episode = get_source("omniglot-mini").batch([EpisodeSpec(tasks=3, train_shots=1, test_shots=1, seed=s, num_codes=12)
                                                 for s in range(2)])
    learner32 = tiny_learner("mamba")
    learner32.requires_grad_(False)
    params32 = add_lora(learner32, find_targets(learner32, ssm=True), rank=2, alpha=4.0)
    frozen = {k: v.clone() for k, v in learner32.state_dict().items() if "lora_" not in k}
    optimizer = torch.optim.Adam(params32, lr=0.05)
    meta_train_step(learner32, episode, optimizer, warmup_halving_schedule(optimizer, 0, 100), params32, 0.5, 1.0, "fp32")
    after = learner32.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # the base weights did not move
    assert all(p.abs().sum() > 0 for p in params32[1::2])  # every B left zero
    with torch.no_grad():
        for p in params[1::2]:
            p.normal_()
        dt_only = [p for p, name in zip(params[1::2], find_targets(learner, ssm=True)) if "dt_proj" not in name]
        for p in dt_only:
            p.zero_()
    adapted = learner(sx, sy, qx).logits  # only dt_proj's adapter is non-zero: read through F.linear(dt_proj.weight)
    assert (adapted - base_logits).abs().max() > 1e-6  # float64: far above rounding (peft: exactly 0)
    assert torch.allclose(learner.query(stream_recurrently(learner, sx, sy), qx), adapted, atol=1e-9)
    merge_lora(learner)
    assert torch.allclose(learner(sx, sy, qx).logits, adapted, atol=1e-12)
    assert set(learner.state_dict()) == set(before)  # a plain learner again


# ---- adapter files and the CLI ----------------------------------------------------------------------
def test_adapt_writes_a_small_safe_adapter_and_leaves_the_base_alone(adapted):
    ckpt, out, sha = adapted
    assert file_sha256(ckpt) == sha
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == "mclstudio-adapter" and raw["rank"] == 2 and raw["base"]["sha256"] == sha
    assert raw["base"]["model"] == "mamba" and raw["targets"] == find_targets(tiny_learner("mamba"))
    adapter = load_adapter(out)
    assert adapter.parameters == raw["metadata"]["trainable_parameters"] < raw["metadata"]["base_parameters"] / 5
    assert out.stat().st_size < 50_000
    base = load_checkpoint(ckpt).learner
    [applied] = load_learners([str(ckpt)], [str(out)])
    assert applied.name == "mamba+mamba-inv" and applied.adapter_sha256 == file_sha256(out)
    sx, sy, qx = inputs(dtype=torch.float32)
    sx, qx = (t.repeat_interleave(4, -1).repeat_interleave(4, -2) for t in (sx, qx))  # 8x8 -> 32x32 images
    assert (applied.learner(sx, sy, qx).logits - base(sx, sy, qx).logits).abs().max() > 1e-4
    for name, value in base.state_dict().items():  # only the adapted projections differ
        assert torch.equal(applied.learner.state_dict()[name], value) == (name.split(".")[-2] not in ("in_proj", "x_proj", "out_proj"))


def test_adapt_is_a_function_of_its_config(adapted, tmp_path):
    ckpt, out, _ = adapted
    cfg = dict(checkpoint=str(ckpt), dataset="omniglot-mini:inverted", rank=2, steps=1, batch_size=2, tasks=3,
               train_shots=1, test_shots=1, device="cpu")
    runs = [load_adapter(adapt(AdaptConfig(**cfg, out=str(tmp_path / f"{i}.pt")))["out"]).tensors for i in range(2)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_eval_record_and_verify_with_an_adapter(adapted, tmp_path, capsys):
    ckpt, out, _ = adapted
    code, stdout, err = run_cli(capsys, "eval", ckpt, "--adapter", out, "--episodes", 2, "--batch-size", 2, "--json",
                                "--device", "cpu", "--domain", "omniglot-mini:inverted")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["adapter"] == str(out) and report["results"][-1]["dataset"] == "omniglot-mini:inverted"
    rec = tmp_path / "run.h5"
    code, _, err = run_cli(capsys, "record", ckpt, ckpt, "--adapter", out, "--episodes", 1, "--tasks", 3, "--shots", 1,
                           "--test-shots", 1, "--dataset", "omniglot-mini:inverted", "--eval-every", "task", "-o", rec)
    assert code == 0, err
    with h5py.File(rec) as f:
        assert json.loads(f.attrs["learners"]) == ["mamba+mamba-inv", "mamba"]
        attrs = f["learners/mamba+mamba-inv"].attrs
        assert attrs["adapter_path"] == str(out) and attrs["adapter_sha256"] == file_sha256(out)
        assert "adapter_path" not in f["learners/mamba"].attrs
    code, stdout, err = run_cli(capsys, "replay", rec, "--verify", "--no-plot")
    assert code == 0 and "verify: OK" in stdout, err
    changed = tmp_path / "changed.pt"  # verify re-applies the recorded adapter: a changed file is caught
    raw = torch.load(out, weights_only=True)
    raw["tensors"] = {k: v + 1 for k, v in raw["tensors"].items()}
    torch.save(raw, changed)
    code, _, err = run_cli(capsys, "record", ckpt, "--adapter", changed, "--episodes", 1, *EPISODE, "-o", tmp_path / "b.h5")
    assert code == 0, err
    torch.save(torch.load(out, weights_only=True), changed)
    code, _, err = run_cli(capsys, "replay", tmp_path / "b.h5", "--verify", "--no-plot")
    assert code == 1 and "adapter" in err and "sha256" in err


def test_replay_with_an_adapted_checkpoint(adapted, tmp_path, capsys):
    ckpt, out, _ = adapted
    rec = tmp_path / "run.h5"
    code, _, err = run_cli(capsys, "record", ckpt, "--episodes", 1, "--tasks", 3, "--shots", 1, "--test-shots", 1,
                           "--dataset", "omniglot-mini:inverted", "-o", rec)
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "replay", rec, "--json", "--with", ckpt, "--with", ckpt, "--adapter", out)
    assert code == 0, err
    rows = {row["learner"]: row for row in json.loads(stdout)["learners"]}
    assert set(rows) == {"mamba", "mamba+mamba-inv", "mamba (with)"}
    assert rows["mamba+mamba-inv"]["source"] == f"with mamba.pt + {out.name}"
    # the plain checkpoint re-run reproduces the recording; the adapted one is a different learner
    assert rows["mamba (with)"]["accuracy_by_tasks_learned"] == rows["mamba"]["accuracy_by_tasks_learned"]
    one_line_error(*run_cli(capsys, "replay", rec, "--adapter", out)[::2], "--with")
    other = save_tiny(tmp_path / "transformer.pt", "transformer", 1)
    one_line_error(*run_cli(capsys, "replay", rec, "--with", other, "--adapter", out)[::2], "adapts mamba.pt")


def test_bad_adapters_and_options_get_one_line(adapted, tmp_path, capsys):
    ckpt, out, _ = adapted
    other = save_tiny(tmp_path / "transformer.pt", "transformer", 1)
    one_line_error(*run_cli(capsys, "eval", other, "--adapter", out)[::2], "adapts mamba.pt")
    one_line_error(*run_cli(capsys, "eval", ckpt, "--adapter", tmp_path / "missing.pt")[::2], "adapter not found")
    one_line_error(*run_cli(capsys, "eval", ckpt, "--adapter", ckpt)[::2], "it is a checkpoint")
    one_line_error(*run_cli(capsys, "eval", out)[::2], "is an adapter")
    one_line_error(*run_cli(capsys, "record", ckpt, "--adapter", out, "--adapter", out, "-o", tmp_path / "x.h5")[::2],
                   "already has an adapter")
    bad = [(["--rank", "0"], "rank must be at least 1"), (["--steps", "0"], "steps must be at least 1"),
           (["--dataset", "omniglot-mini:blurred"], "unknown dataset"), (["--alpha", "-1"], "positive")]
    for args, needle in bad:
        dataset = [] if "--dataset" in args else ["--dataset", "omniglot-mini:inverted"]
        argv = ["adapt", ckpt, *dataset, "--steps", 1, *EPISODE, "-o", tmp_path / "a.pt", *args]
        one_line_error(*run_cli(capsys, *argv)[::2], needle)
    one_line_error(*run_cli(capsys, "adapt", other, "--dataset", "omniglot-mini", "--ssm", "-o", tmp_path / "a.pt")[::2],
                   "no SSM projections")
    with pytest.raises(AdapterError):
        load_learners([str(other), str(other)], [str(out)])


def test_open_applies_adapters(adapted, tmp_path):
    from mclstudio.tui.cli import build_open_app

    ckpt, out, _ = adapted
    app = build_open_app([str(ckpt), str(ckpt)], tasks=3, shots=1, device="cpu", record_dir=tmp_path,
                         adapters=[str(out)])
    assert [c.name for c in app.checkpoints] == ["mamba+mamba-inv", "mamba"]
    with pytest.raises(AdapterError, match="adapts mamba.pt"):
        build_open_app([str(save_tiny(tmp_path / "other.pt", "transformer"))], adapters=[str(out)], device="cpu")
