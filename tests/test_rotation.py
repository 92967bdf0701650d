"""Random rotations of frozen embeddings (training/rotation.py) and starting a run from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from mclstudio.data import EpisodeSpec, get_source
from mclstudio.learners.registry import build_learner, make_config
from mclstudio.store.checkpoint import load_checkpoint
from mclstudio.training.loop import meta_train_step, warmup_halving_schedule
from mclstudio.training.rotation import RotationBank, haar_orthogonal, rotate
from mclstudio.training.trainer import MetaTraining, TrainConfig, train

from cli_helpers import run_cli

TINY = {"d_model": 16, "n_layers": 1, "encoder_channels": 8, "y_vocab": 12}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_bank_rotations_are_orthogonal_and_the_unrotated_share_gets_the_identity() -> None:
    q = haar_orthogonal(8, 6, torch.Generator().manual_seed(0))
    assert torch.allclose(q @ q.transpose(1, 2), torch.eye(6).expand(8, 6, 6), atol=1e-5)
    assert not torch.allclose(q[0], q[1])
    bank = RotationBank(6, fraction=0.5, seed=3, device=torch.device("cpu"), size=16)
    drawn = bank.draw(step=4, rank=0, batch=64)
    identity = torch.tensor([torch.equal(r, torch.eye(6)) for r in drawn])
    # a pure function of (seed, step, rank): the same draw again, another step differs
    assert torch.equal(drawn, bank.draw(step=4, rank=0, batch=64))
    assert not torch.equal(drawn, bank.draw(step=5, rank=0, batch=64))
    assert 20 <= int(identity.sum()) <= 44  # about half of 64 (binomial: outside this is p < 1e-3)
    assert identity.any() and not identity.all()  # both kinds occur
    assert bool((RotationBank(6, 1.0, 3, torch.device("cpu"), 16).draw(4, 0, 64) != torch.eye(6)).any(dim=(1, 2)).all())
    assert all(torch.equal(r, torch.eye(6)) for r in RotationBank(6, 0.0, 3, torch.device("cpu"), 16).draw(4, 0, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RotationBank(6, 1.5, 0, torch.device("cpu"))


def test_rotate_multiplies_each_episode_by_its_own_matrix() -> None:
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    flip = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])
    out = rotate(x, torch.stack([swap, flip]))
    assert torch.equal(out[0], x[0][:, [1, 0]])
    assert torch.equal(out[1], torch.stack([-x[1][:, 0], x[1][:, 1]], dim=1))


def test_a_step_with_a_rotation_is_a_step_on_the_rotated_table() -> None:
    """meta_train_step(table, rotation=R) trains exactly as the same step fed the table times R."""
    source = get_source("omniglot-mini")
    ep = source.batch([EpisodeSpec(split="train", tasks=3, train_shots=2, test_shots=1, seed=s, num_codes=12) for s in (0, 0)])
    table = torch.randn(source.pool_size, 16, generator=torch.Generator().manual_seed(1))
    r = haar_orthogonal(1, 16, torch.Generator().manual_seed(2))[0]
    results = []
    for step_table, rotation in ((table, torch.stack([r, r])), (table @ r, None)):
        torch.manual_seed(0)
        learner = build_learner(make_config("mamba", x_shape=(1, 32, 32), **TINY))
        opt = torch.optim.SGD(learner.parameters(), lr=0.1)
        stats = meta_train_step(learner, ep, opt, warmup_halving_schedule(opt, 0, 100), list(learner.parameters()),
                                0.5, 1.0, table=step_table, rotation=rotation)
        results.append((stats.loss.item(), learner.state_dict()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert all(torch.allclose(results[0][1][k], results[1][1][k], atol=1e-6) for k in results[0][1])
    # and a rotation changes what the step sees: another R gives another loss
    torch.manual_seed(0)
    learner = build_learner(make_config("mamba", x_shape=(1, 32, 32), **TINY))
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    plain = meta_train_step(learner, ep, opt, warmup_halving_schedule(opt, 0, 100), list(learner.parameters()),
                            0.5, 1.0, table=table)
    assert abs(plain.loss.item() - results[0][0]) > 1e-3


def test_protonet_answers_the_same_under_any_rotation() -> None:
    """ProtoNet's nearest class mean depends on distances only: rotating every embedding keeps its logits."""
    torch.manual_seed(0)
    learner = build_learner(make_config("protonet", x_shape=(1, 32, 32), **{k: v for k, v in TINY.items() if k != "n_layers"}))
    g = torch.Generator().manual_seed(5)
    stream_x, query_x = torch.randn(2, 6, 16, generator=g), torch.randn(2, 3, 16, generator=g)
    stream_y = torch.tensor([[4, 4, 7, 7, 1, 1], [0, 2, 2, 9, 9, 9]])
    r = haar_orthogonal(2, 16, g)
    plain, _ = learner(stream_x, stream_y, query_x, embedded=True)
    turned, _ = learner(rotate(stream_x, r), stream_y, rotate(query_x, r), embedded=True)
    assert torch.allclose(plain, turned, atol=1e-4)


def _cfg(tmp_path, **kw):
    base = dict(model="mamba", tasks=3, train_shots=2, test_shots=1, batch_size=2, lr=1e-2, warmup_steps=0,
                checkpoint_every=10, device="cpu", learner=dict(TINY), out=str(tmp_path / "r.pt"), steps=2)
    return TrainConfig(**{**base, **kw})


def test_the_trainer_rotates_the_frozen_table_per_episode_and_checks_its_options(tmp_path) -> None:
    cfg = _cfg(tmp_path, rotate_embeddings=1.0, frozen_encoder_steps=2)
    recipe = MetaTraining(cfg)
    batch = recipe.next_batch(0)
    assert batch.table is not None and batch.rotation is not None and batch.rotation.shape == (2, 16, 16)
    assert not torch.equal(batch.rotation[0], batch.rotation[1])
    assert torch.equal(recipe.next_batch(0).rotation, batch.rotation)  # reproducible (resume sees the same)
    assert MetaTraining(_cfg(tmp_path, frozen_encoder_steps=2)).next_batch(0).rotation is None
    for bad, match in (
        (dict(rotate_embeddings=0.5), "frozen encoder"),  # no frozen encoder
        (dict(rotate_embeddings=0.5, frozen_encoder_steps=1), "frozen encoder"),  # not for the whole run
        (dict(rotate_embeddings=0.5, frozen_encoder_steps=2, augment=True), "augment"),
        (dict(rotate_embeddings=1.5, frozen_encoder_steps=2), r"\[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            _cfg(tmp_path, **bad).validate()


def test_init_from_starts_from_a_checkpoint_without_pretraining(tmp_path) -> None:
    train(_cfg(tmp_path, out=str(tmp_path / "first.pt"), frozen_encoder_steps=2))
    first = load_checkpoint(tmp_path / "first.pt").learner.state_dict()
    recipe = MetaTraining(_cfg(tmp_path, out=str(tmp_path / "second.pt"), init_from=str(tmp_path / "first.pt"),
                               pretrain_steps=5))
    assert recipe.pretrain_accuracy is None  # pre-training is skipped: the encoder comes from the checkpoint
    assert all(torch.equal(first[k], v) for k, v in recipe.learner.state_dict().items())
    other = dict(TINY, d_model=8)
    with pytest.raises(ValueError, match="different learner config"):
        MetaTraining(_cfg(tmp_path, out=str(tmp_path / "third.pt"), init_from=str(tmp_path / "first.pt"), learner=other))


def test_train_cli_refuses_a_bad_rotation_share_and_a_missing_start(tmp_path, capsys) -> None:
    code, out, err = run_cli(capsys, "train", "--rotate-embeddings", "1.5", "-o", tmp_path / "a.pt")
    assert code != 0 and "at most 1" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "train", "--rotate-embeddings", "0.5", "--steps", "2", "-o", tmp_path / "b.pt")
    assert code != 0 and "frozen encoder" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "train", "--init-from", tmp_path / "missing.pt", "--steps", "1", "--d-model", "16",
                             "--layers", "1", "--encoder-channels", "8", "--tasks", "3", "--batch-size", "1",
                             "-o", tmp_path / "c.pt")
    assert code != 0 and "missing.pt" in err and "Traceback" not in err + out
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("init_dir, augment", [("checkpoints/previous", "0"), ("checkpoints", "1")],
                         ids=["stage2-from-stage1", "stage3-augmented"])
def test_train_shipped_later_stages_start_from_a_checkpoint_with_the_encoder_frozen(tmp_path, init_dir: str,
                                                                                    augment: str) -> None:
    """checkpoints/train_shipped.sh's stages 2 and 3 (INIT_DIR, AUGMENT): the run starts from the given
    weights, trains the sequence model (with class-level augmentation when asked) and leaves the frozen
    encoder exactly as it was."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    start_file = root / init_dir / "mamba.pt"
    env = dict(os.environ, DEVICE="cpu", MODELS="mamba", STEPS="1", BATCH="1", TASKS="3", THREADS="1",
               INIT_DIR=str(root / init_dir), AUGMENT=augment, OUTDIR=str(tmp_path), PYTHON=sys.executable,
               PYTHONPATH=str(root))
    done = subprocess.run(["bash", str(root / "checkpoints" / "train_shipped.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (tmp_path / "train_mamba.log").read_text()
    start = load_checkpoint(start_file).learner.state_dict()
    after = load_checkpoint(tmp_path / "mamba.pt")
    assert after.metadata["train_config"]["init_from"] == str(start_file)
    assert after.metadata["train_config"]["augment"] is (augment == "1")
    assert after.metadata["episode_spec"]["augment"] is (augment == "1")
    assert after.metadata["episode_spec"]["tasks"] == 3 and after.metadata["encoder_pretrain_accuracy"] is None
    weights = after.learner.state_dict()
    encoder = [k for k in start if k.startswith("embedding.x_encoder.")]
    assert encoder and all(torch.equal(start[k], weights[k]) for k in encoder)
    assert any(not torch.equal(start[k], weights[k]) for k in start if k not in encoder and start[k].is_floating_point())
