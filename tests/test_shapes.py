"""Episode shapes (uneven shots, sampled shapes) and class-level augmentation (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mclstudio.data import DataError, EpisodeSpec, ShapeRange, get_source, parse_range, parse_shots
from mclstudio.data import augmentation
from mclstudio.data.sources import OmniglotMini

from cli_helpers import run_cli


@pytest.fixture(scope="module")
def omni() -> OmniglotMini:
    source = get_source("omniglot-mini")
    assert isinstance(source, OmniglotMini)
    return source


# ---- uneven shots ----


def test_uneven_shots_are_a_prefix_of_the_even_episode(omni: OmniglotMini) -> None:
    uneven = omni.episode(EpisodeSpec(split="train", tasks=3, shots=(1, 3, 2), test_shots=2, seed=4))
    even = omni.episode(EpisodeSpec(split="train", tasks=3, train_shots=3, test_shots=2, seed=4))
    assert uneven.stream_task.tolist() == [0, 1, 1, 1, 2, 2]
    assert uneven.query_task.tolist() == [0, 0, 1, 1, 2, 2]
    # Same classes, codes and queries; task t streams the first S_t samples the even episode streams.
    assert torch.equal(uneven.class_ids, even.class_ids) and torch.equal(uneven.codes, even.codes)
    assert torch.equal(uneven.query_x, even.query_x) and torch.equal(uneven.test_sample_ids, even.test_sample_ids)
    ids = even.train_sample_ids[0]
    assert uneven.train_sample_ids[0].tolist() == [[ids[0, 0], -1, -1], ids[1].tolist(), [ids[2, 0], ids[2, 1], -1]]
    expected_ids = [ids[0, 0], ids[1, 0], ids[1, 1], ids[1, 2], ids[2, 0], ids[2, 1]]
    assert uneven.stream_sample_ids()[0].tolist() == [int(i) for i in expected_ids]
    assert torch.equal(uneven.stream_x[0], omni.inputs(uneven.stream_sample_ids()[0]))
    assert torch.equal(uneven.stream_y[0], uneven.codes[0][uneven.stream_task])
    # Even episodes: stream_sample_ids is the flattened (T, S) table.
    assert torch.equal(even.stream_sample_ids(), even.train_sample_ids.flatten(1))


def test_uneven_sine_keeps_the_first_shots_of_each_task() -> None:
    sine = get_source("sine")
    uneven = sine.episode(EpisodeSpec(dataset="sine", tasks=3, shots=(2, 1, 3), test_shots=2, seed=1))
    even = sine.episode(EpisodeSpec(dataset="sine", tasks=3, train_shots=3, test_shots=2, seed=1))
    keep = [0, 1, 3, 6, 7, 8]
    assert torch.equal(uneven.stream_y[0], even.stream_y[0, keep])
    assert torch.equal(uneven.stream_x[0], even.stream_x[0, keep])
    assert torch.equal(uneven.query_y, even.query_y)
    assert uneven.train_sample_ids.shape == (1, 3, 3)


def test_spec_shots_canonical_form_and_round_trip() -> None:
    spec = EpisodeSpec(tasks=3, shots=[1, 4, 2])
    assert spec.shots == (1, 4, 2) and spec.train_shots == 4 and spec.stream_length == 7 and spec.max_shots == 4
    assert EpisodeSpec(tasks=3, shots=(2, 2, 2)) == EpisodeSpec(tasks=3, train_shots=2)
    assert EpisodeSpec(tasks=2).task_shots == (5, 5)
    through_json = EpisodeSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert through_json == spec and hash(through_json) == hash(spec)


def test_spec_shot_errors(omni: OmniglotMini) -> None:
    with pytest.raises(DataError, match="3 tasks need 3 per-task shots, not 2"):
        EpisodeSpec(tasks=3, shots=(1, 2)).validate()
    with pytest.raises(DataError, match="at least 1"):
        EpisodeSpec(tasks=2, shots=(0, 2)).validate()
    with pytest.raises(DataError, match="16 train \\+ 5 test shots need 21"):
        omni.episode(EpisodeSpec(tasks=2, shots=(1, 16)))
    with pytest.raises(DataError, match="must share"):
        omni.batch([EpisodeSpec(tasks=2, shots=(1, 2)), EpisodeSpec(tasks=2, shots=(2, 1), seed=1)])


def test_parse_range_and_shots() -> None:
    assert parse_range("1:20", "--tasks-range") == (1, 20) and parse_range("7", "x") == (7, 7)
    for bad in ("0:3", "5:2", "a:b", "1:2:3"):
        with pytest.raises(DataError, match="--tasks-range"):
            parse_range(bad, "--tasks-range")
    assert parse_shots("5", 3) == (5, None)
    assert parse_shots("1,3,2", 3) == (3, (1, 3, 2))
    for bad, message in (("1,2", "3 tasks need one shot count each"), ("x", "whole number"), ("0", "at least 1")):
        with pytest.raises(DataError, match=message):
            parse_shots(bad, 3)


def test_shape_range_is_deterministic_and_covers_its_range() -> None:
    shapes = ShapeRange(1, 4, 1, 3)
    draws = [shapes.sample(seed=0, step=s) for s in range(300)]
    assert draws == [shapes.sample(seed=0, step=s) for s in range(300)]  # a resumed run sees the same
    assert draws != [shapes.sample(seed=1, step=s) for s in range(300)]
    assert {t for t, _ in draws} == {1, 2, 3, 4}
    assert all(len(shots) == t and set(shots) <= {1, 2, 3} for t, shots in draws)
    assert {s for _, shots in draws for s in shots} == {1, 2, 3}
    assert any(len(set(shots)) > 1 for _, shots in draws)  # uneven streams occur
    spec = shapes.apply(EpisodeSpec(split="train", seed=9), seed=0, step=5)
    assert (spec.tasks, spec.task_shots, spec.seed) == (draws[5][0], draws[5][1], 9)
    assert ShapeRange(20, 20, 5, 5).fixed and not shapes.fixed
    with pytest.raises(DataError, match="tasks range"):
        ShapeRange(0, 3, 1, 1).validate()


# ---- class-level augmentation ----


def test_dihedral_part_is_exact() -> None:
    x = torch.rand(1, 2, 1, 32, 32) * 2 - 1
    task = torch.tensor([0, 1])
    zero = dict(angle=0.0, scale=1.0, shear=0.0, shift=(0.0, 0.0))
    theta = np.stack([augmentation.class_matrix(True, 0, **zero), augmentation.class_matrix(False, 1, **zero)])
    transforms = augmentation.ClassTransforms(torch.from_numpy(theta).float()[None], torch.zeros(1, 2, dtype=torch.long))
    out = augmentation.apply(x, task, transforms)
    assert torch.allclose(out[0, 0], torch.flip(x[0, 0], dims=[-1]), atol=1e-5)  # mirror
    assert torch.allclose(out[0, 1], torch.rot90(x[0, 1], 1, dims=(-2, -1)), atol=1e-5)  # a quarter turn


def test_augmented_episode_transforms_each_class_one_way(omni: OmniglotMini) -> None:
    spec = EpisodeSpec(split="train", tasks=6, shots=(1, 2, 3, 1, 2, 3), test_shots=2, seed=11, augment=True)
    aug, again = omni.episode(spec), omni.episode(spec)
    plain = omni.episode(EpisodeSpec(**{**spec.to_dict(), "augment": False}))
    assert torch.equal(aug.stream_x, again.stream_x) and torch.equal(aug.query_x, again.query_x)  # same seed
    assert not torch.equal(aug.stream_x, omni.episode(spec.with_seed(12)).stream_x)
    # Same classes, codes and samples as the plain episode: only the pixels change.
    for name in ("class_ids", "codes", "train_sample_ids", "test_sample_ids", "stream_y", "query_y"):
        assert torch.equal(getattr(aug, name), getattr(plain, name)), name
    assert not torch.allclose(aug.stream_x, plain.stream_x)
    # Every image, stream or query, equals its plain image under its class's one drawn transform.
    drawn = augmentation.draw_class_transforms(spec, new_class_rotations=False)
    for x_aug, x_plain, tasks in ((aug.stream_x, plain.stream_x, aug.stream_task), (aug.query_x, plain.query_x, aug.query_task)):
        for i, t in enumerate(tasks.tolist()):
            one = augmentation.ClassTransforms.stack([drawn[t : t + 1]], torch.device("cpu"))
            expected = augmentation.apply(x_plain[:, i : i + 1], torch.tensor([0]), one)
            assert torch.allclose(x_aug[:, i : i + 1], expected, atol=1e-6), (i, t)
    assert set(drawn[:, 6].tolist()) <= {-1.0, 0.0, 1.0}  # stroke: thinner, unchanged, thicker


def test_augmentation_is_meta_train_only(omni: OmniglotMini) -> None:
    with pytest.raises(DataError, match="meta-train split only"):
        omni.episode(EpisodeSpec(split="test", tasks=3, augment=True))
    with pytest.raises(DataError, match="sine has no images"):
        get_source("sine").episode(EpisodeSpec(dataset="sine", split="train", tasks=3, augment=True))


# ---- training with sampled shapes ----


def test_training_samples_one_shape_per_step_and_resumes_with_the_same(tmp_path, monkeypatch) -> None:
    from mclstudio.data.sources import ImageSource
    from mclstudio.training.trainer import TrainConfig, train

    seen: list[tuple[int, tuple[int, ...], bool]] = []
    real_batch = ImageSource.batch

    def spy(self, specs):  # records the shape of every batch the trainer asks for
        if len(specs) == 2:
            seen.append((specs[0].tasks, specs[0].task_shots, specs[0].augment))
        return real_batch(self, specs)

    monkeypatch.setattr(ImageSource, "batch", spy)
    learner = {"d_model": 16, "n_layers": 1, "encoder_channels": 8, "y_vocab": 12}
    cfg = dict(model="mamba", tasks=3, train_shots=2, test_shots=1, batch_size=2, lr=1e-3, checkpoint_every=2,
               log_every=2, device="cpu", learner=learner, tasks_range=(1, 4), shots_range=(1, 3), augment=True, seed=3)
    train(TrainConfig(**cfg, steps=4, out=str(tmp_path / "a.pt")))
    shapes = ShapeRange(1, 4, 1, 3)
    expected = [(*shapes.sample(3, step), True) for step in range(4)]
    assert seen == expected and len({s[:2] for s in seen}) > 1
    seen.clear()
    train(TrainConfig(**cfg, steps=2, out=str(tmp_path / "b.pt")))
    train(TrainConfig(**cfg, steps=4, out=str(tmp_path / "b.pt"), resume=True))
    assert seen == expected

    with pytest.raises(ValueError, match="30 tasks need at least 30 label codes"):
        train(TrainConfig(**{**cfg, "tasks_range": (1, 30)}, steps=1, out=str(tmp_path / "c.pt")))


# ---- recordings and the studio carry uneven shots ----


def test_record_and_replay_uneven_shots(tmp_path, capsys) -> None:
    from mclstudio.learners.registry import build_learner, make_config
    from mclstudio.recording import read_recording
    from mclstudio.store.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_learner(make_config("mamba", d_model=16, n_layers=1, encoder_channels=8, y_vocab=12)), {})
    out = tmp_path / "run.h5"
    code, _, err = run_cli(capsys, "record", ckpt, "--episodes", 1, "--tasks", 3, "--shots", "1,3,2", "--test-shots", 1,
                           "-o", out)
    assert code == 0, err
    [episode] = read_recording(out).episodes
    assert episode.spec.shots == (1, 3, 2) and episode.spec.train_shots == 3
    assert episode.stream_task.tolist() == [0, 1, 1, 1, 2, 2]
    assert episode.traces["m"].num_examples == 6
    code, stdout, err = run_cli(capsys, "replay", out, "--verify", "--no-plot")
    assert code == 0 and "verify: OK" in stdout, err  # replay rebuilds the uneven episode exactly
    code, _, err = run_cli(capsys, "record", ckpt, "--tasks", 3, "--shots", "1,2", "-o", tmp_path / "bad.h5")
    assert code == 2 and err.strip() == "error: 3 tasks need one shot count each, not 2 (1,2)"


def test_open_takes_uneven_shots(tmp_path) -> None:
    from pathlib import Path

    from mclstudio.tui.cli import build_open_app

    mamba = Path(__file__).resolve().parents[1] / "checkpoints" / "mamba.pt"
    app = build_open_app([str(mamba)], tasks=3, shots="2,1,4", device="cpu", record_dir=tmp_path)
    assert app.spec.task_shots == (2, 1, 4)


def test_frozen_encoder_steps_freeze_the_encoder_under_augmentation(tmp_path) -> None:
    from mclstudio.store.checkpoint import load_checkpoint
    from mclstudio.training.trainer import TrainConfig, build_for_data, train

    learner = {"d_model": 16, "n_layers": 1, "encoder_channels": 8, "y_vocab": 12}
    cfg = dict(model="mamba", tasks=3, train_shots=2, test_shots=1, batch_size=2, lr=1e-2, warmup_steps=0,
               checkpoint_every=10, device="cpu", learner=learner, augment=True, frozen_encoder_steps=2,
               out=str(tmp_path / "f.pt"))
    initial = build_for_data(TrainConfig(**cfg), (1, 32, 32), 0).state_dict()
    train(TrainConfig(**cfg, steps=2))
    after_two = load_checkpoint(tmp_path / "f.pt").learner.state_dict()
    encoder = [k for k in initial if k.startswith("embedding.x_encoder.")]
    others = [k for k in initial if k not in encoder and initial[k].is_floating_point()]
    assert encoder and all(torch.equal(initial[k], after_two[k]) for k in encoder)
    assert any(not torch.equal(initial[k], after_two[k]) for k in others)
    train(TrainConfig(**cfg, steps=3, resume=True))  # step 3 trains the encoder too
    after_three = load_checkpoint(tmp_path / "f.pt").learner.state_dict()
    assert any(not torch.equal(after_two[k], after_three[k]) for k in encoder)


def test_a_batch_equals_its_episodes_with_uneven_shots_and_augmentation(omni: OmniglotMini) -> None:
    from mclstudio.data import Episode

    specs = [EpisodeSpec(split="train", tasks=4, shots=(2, 1, 3, 1), test_shots=2, seed=s, augment=True) for s in range(3)]
    batch, single = omni.batch(specs), Episode.concat([omni.episode(s) for s in specs])
    for name in batch.__dataclass_fields__:
        if name != "specs":
            assert torch.equal(getattr(batch, name), getattr(single, name)), name
