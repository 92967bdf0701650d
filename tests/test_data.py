"""Tests of the data layer: Omniglot-mini, sine and torchvision sources (no downloads)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mclstudio.data import OMNIGLOT_MINI_SPLITS, DataError, Episode, EpisodeSpec, get_source
from mclstudio.data.sources import OmniglotMini, SineSource, TorchvisionSource
from mclstudio.data.sources.torchvision_datasets import _load_pool

ASSET = Path(__file__).resolve().parents[1] / "mclstudio" / "data" / "assets" / "omniglot_mini.npz"


@pytest.fixture(scope="module")
def omni() -> OmniglotMini:
    source = get_source("omniglot-mini")
    assert isinstance(source, OmniglotMini)
    return source


def assert_episodes_equal(a: Episode, b: Episode) -> None:
    for name in a.__dataclass_fields__:
        if name == "specs":
            assert a.specs == b.specs
        else:
            assert torch.equal(getattr(a, name), getattr(b, name)), name


# ---- the shipped file ----


def test_shipped_npz_has_242_characters_in_8_alphabets() -> None:
    with np.load(ASSET, allow_pickle=False) as npz:
        assert npz["images"].shape == (242, 20, 32, 32)
        assert npz["images"].dtype == np.uint8
        assert len(npz["alphabets"]) == 8
        assert npz["char_alphabet"].shape == (242,)
        assert len(set(npz["char_names"])) == 242
        counts = dict(zip(npz["alphabets"], np.bincount(npz["char_alphabet"])))
        # Ink on a blank background: mostly zeros, some full strokes.
        assert npz["images"].max() == 255 and np.median(npz["images"]) == 0
    assert counts == {
        "Balinese": 24, "Early_Aramaic": 22, "Greek": 24, "Japanese_(katakana)": 47,
        "Korean": 40, "Latin": 26, "Sanskrit": 42, "Tagalog": 17,
    }  # fmt: skip
    assert (ASSET.parent / "OMNIGLOT_LICENSE.txt").read_text().count("MIT") >= 1


# ---- omniglot-mini ----


def test_splits_are_disjoint(omni: OmniglotMini) -> None:
    train, test = omni.split_classes["train"], omni.split_classes["test"]
    assert len(train) == 716 and len(test) == 252
    assert not set(train) & set(test)
    train_chars, test_chars = set(train // 4), set(test // 4)
    assert not train_chars & test_chars
    train_alph = {omni.alphabets[omni.char_alphabet[c]] for c in train_chars}
    test_alph = {omni.alphabets[omni.char_alphabet[c]] for c in test_chars}
    assert train_alph == set(OMNIGLOT_MINI_SPLITS["train"])
    assert test_alph == set(OMNIGLOT_MINI_SPLITS["test"])
    # Episodes stay within their split.
    for split, allowed in (("train", set(train)), ("test", set(test))):
        ep = omni.episode(EpisodeSpec(split=split, tasks=50, seed=3))
        assert set(ep.class_ids.flatten().tolist()) <= allowed


def test_determinism(omni: OmniglotMini) -> None:
    spec = EpisodeSpec(tasks=10, seed=7, noise_std=0.3)
    assert_episodes_equal(omni.episode(spec), omni.episode(spec))
    other = omni.episode(spec.with_seed(8))
    assert not torch.equal(omni.episode(spec).class_ids, other.class_ids)
    # The split is part of the seed: same seed, other split, other draws.
    train = omni.episode(EpisodeSpec(split="train", tasks=10, seed=7))
    assert not torch.equal(train.stream_x, omni.episode(EpisodeSpec(split="test", tasks=10, seed=7)).stream_x)


def test_task_major_layout_and_codes(omni: OmniglotMini) -> None:
    spec = EpisodeSpec(tasks=6, train_shots=3, test_shots=2, seed=1)
    ep = omni.episode(spec)
    assert ep.stream_x.shape == (1, 18, 1, 32, 32)
    assert ep.query_x.shape == (1, 12, 1, 32, 32)
    assert ep.stream_task.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert ep.query_task.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert sorted(ep.codes[0].tolist()) == list(range(6))  # num_codes None -> a permutation
    assert torch.equal(ep.stream_y[0], ep.codes[0][ep.stream_task])
    assert torch.equal(ep.query_y[0], ep.codes[0][ep.query_task])
    assert ep.stream_y.dtype == torch.int64 and not ep.is_regression
    assert len(set(ep.class_ids[0].tolist())) == 6
    # Stream images are those of the listed sample ids, in order.
    flat_ids = ep.train_sample_ids[0].reshape(-1)
    expected = omni.images[flat_ids].float() * (2 / 255) - 1
    assert torch.equal(ep.stream_x[0], expected)
    # The sample id scheme: class id * 20 + drawer.
    assert torch.equal(ep.train_sample_ids[0] // 20, ep.class_ids[0][:, None].expand(6, 3))

    wide = omni.episode(EpisodeSpec(tasks=5, num_codes=40, seed=2))
    codes = wide.codes[0].tolist()
    assert len(set(codes)) == 5 and all(0 <= c < 40 for c in codes)
    assert max(codes) >= 5  # drawn from the whole vocabulary (true for this seed)


def test_train_and_test_samples_disjoint_within_class(omni: OmniglotMini) -> None:
    ep = omni.batch([EpisodeSpec(tasks=20, train_shots=10, test_shots=10, seed=s) for s in range(5)])
    for b in range(5):
        for t in range(20):
            train = set(ep.train_sample_ids[b, t].tolist())
            test = set(ep.test_sample_ids[b, t].tolist())
            assert len(train) == 10 and len(test) == 10 and not train & test
            assert train | test == set(range(ep.class_ids[b, t].item() * 20, ep.class_ids[b, t].item() * 20 + 20))


def test_rotations_are_separate_classes(omni: OmniglotMini) -> None:
    with np.load(ASSET) as npz:
        base = torch.from_numpy(npz["images"])
    char = int(omni.split_chars["test"][5])
    for rot in range(4):
        class_id = char * 4 + rot
        pool = omni.images[class_id * 20 : class_id * 20 + 20, 0]
        assert torch.equal(pool, torch.rot90(base[char], rot, dims=(-2, -1)))
    assert not torch.equal(omni.images[char * 4 * 20], omni.images[(char * 4 + 1) * 20])


def test_scaling_and_noise(omni: OmniglotMini) -> None:
    clean = omni.episode(EpisodeSpec(tasks=20, seed=4))
    assert clean.stream_x.dtype == torch.float32
    assert clean.stream_x.min() == -1.0 and clean.stream_x.max() == 1.0
    noisy = omni.episode(EpisodeSpec(tasks=20, seed=4, noise_std=0.5))
    assert torch.equal(clean.class_ids, noisy.class_ids)
    assert torch.equal(clean.train_sample_ids, noisy.train_sample_ids)
    for clean_x, noisy_x in ((clean.stream_x, noisy.stream_x), (clean.query_x, noisy.query_x)):
        diff = noisy_x - clean_x
        assert abs(diff.std().item() - 0.5) < 0.01
        assert abs(diff.mean().item()) < 0.01


def test_batch_equals_concat_of_episodes(omni: OmniglotMini) -> None:
    specs = [EpisodeSpec(split="train", tasks=8, seed=s, noise_std=0.1 * (s % 2), num_codes=12) for s in range(6)]
    batched = omni.batch(specs)
    assert batched.batch_size == 6
    assert_episodes_equal(batched, Episode.concat([omni.episode(s) for s in specs]))


def test_hundred_task_test_episodes(omni: OmniglotMini) -> None:
    ep = omni.episode(EpisodeSpec(split="test", tasks=100, seed=0))
    assert ep.stream_x.shape == (1, 500, 1, 32, 32)
    assert ep.query_x.shape == (1, 500, 1, 32, 32)
    assert len(set(ep.class_ids[0].tolist())) == 100
    assert ep.tasks == 100


def test_to_keeps_data_on_device_and_leaves_source(omni: OmniglotMini) -> None:
    moved = omni.to("cpu")
    assert moved is not omni and moved.images.device.type == "cpu"
    spec = EpisodeSpec(tasks=5, seed=9)
    assert_episodes_equal(moved.episode(spec), omni.episode(spec))
    if torch.cuda.is_available():
        gpu = omni.to("cuda").episode(spec)
        assert gpu.stream_x.is_cuda
        assert_episodes_equal(gpu.to("cpu"), omni.episode(spec))
        assert omni.images.device.type == "cpu"


def test_channels_conversion() -> None:
    rgb = get_source("omniglot-mini", channels=3)
    assert rgb.x_shape == (3, 32, 32)
    ep = rgb.episode(EpisodeSpec(tasks=3, seed=0))
    assert ep.stream_x.shape[2] == 3
    assert torch.equal(ep.stream_x[:, :, 0], ep.stream_x[:, :, 2])
    assert get_source("omniglot-mini") is get_source("omniglot-mini")  # cached


def test_describe(omni: OmniglotMini) -> None:
    line = omni.describe()
    assert "\n" not in line and "omniglot-mini" in line and "716" in line and "252" in line


# ---- errors ----


def one_line_error(func, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_errors(omni: OmniglotMini, tmp_path: Path) -> None:
    assert "252 classes; 300 tasks need 300" in one_line_error(omni.episode, EpisodeSpec(tasks=300))
    assert "20 samples per class" in one_line_error(omni.episode, EpisodeSpec(train_shots=15, test_shots=10))
    one_line_error(omni.episode, EpisodeSpec(split="valid"))
    one_line_error(omni.episode, EpisodeSpec(tasks=0))
    one_line_error(omni.episode, EpisodeSpec(tasks=10, num_codes=5))
    one_line_error(omni.episode, EpisodeSpec(noise_std=-1.0))
    one_line_error(omni.episode, EpisodeSpec(dataset="sine"))
    one_line_error(omni.batch, [])
    one_line_error(omni.batch, [EpisodeSpec(tasks=5), EpisodeSpec(tasks=6)])
    assert "unknown dataset 'foo'" in one_line_error(get_source, "foo")
    assert "torchvision.datasets class" in one_line_error(get_source, "torchvision:NoSuchSet", root=str(tmp_path))
    missing = tmp_path / "nowhere"
    message = one_line_error(get_source, "torchvision:MNIST", root=str(missing))
    assert "not found under" in message and "--download" in message
    message = one_line_error(get_source, "torchvision:MNIST", root=str(tmp_path))  # folder without data
    assert "not found under" in message
    one_line_error(get_source, "omniglot-mini", channels=2)


# ---- sine ----


def test_sine() -> None:
    sine = get_source("sine")
    assert isinstance(sine, SineSource)
    assert sine.kind == "regression" and sine.x_shape == (50,) and sine.y_dim == 50
    spec = EpisodeSpec(dataset="sine", tasks=10, train_shots=5, test_shots=4, seed=3)
    ep = sine.episode(spec)
    assert ep.stream_x.shape == (1, 50, 50) and ep.stream_y.shape == (1, 50, 50)
    assert ep.query_x.shape == (1, 40, 50) and ep.query_y.shape == (1, 40, 50)
    assert ep.is_regression and ep.stream_y.dtype == torch.float32
    assert (ep.class_ids == -1).all() and (ep.train_sample_ids == -1).all() and (ep.test_sample_ids == -1).all()
    assert_episodes_equal(ep, sine.episode(spec))
    other_split = EpisodeSpec(dataset="sine", tasks=10, seed=3, split="train")
    assert not torch.equal(ep.stream_y, sine.episode(other_split).stream_y)

    # Each y is amp * sin(freq * t + phase) = a sin(freq t) + b cos(freq t): least squares over a
    # frequency grid must fit it almost exactly, with amplitude sqrt(a^2 + b^2) in [0.5, 1.5].
    y = torch.cat([ep.stream_y[0], ep.query_y[0]]).double()
    t = torch.linspace(0, 10, 50, dtype=torch.float64)
    for i in range(0, len(y), 7):
        fits = []
        for f in torch.linspace(0.1, 1.1, 401, dtype=torch.float64):
            basis = torch.stack([torch.sin(f * t), torch.cos(f * t)], 1)
            coef = torch.linalg.lstsq(basis, y[i][:, None]).solution[:, 0]
            fits.append(((basis @ coef - y[i]).abs().max().item(), coef.norm().item()))
        error, amplitude = min(fits)
        assert error < 0.05
        assert 0.5 - 0.02 <= amplitude <= 1.5 + 0.02
    # Curves of one task share frequency and phase: stacked, they have rank one.
    tasks = torch.cat([ep.stream_task, ep.query_task])
    singular = torch.linalg.svdvals(y[tasks == 0])
    assert singular[1] < 1e-5 * singular[0]
    # x = a sine of the same amplitude + N(0, 0.1) noise: residual around a smooth curve is ~0.1.
    x = ep.stream_x[0].double()
    assert 0.05 < (x[:, 1:] - x[:, :-1]).std().item() / np.sqrt(2) < 0.2
    # batch = concat, noise included.
    specs = [EpisodeSpec(dataset="sine", tasks=3, seed=s, noise_std=0.2) for s in range(4)]
    assert_episodes_equal(sine.batch(specs), Episode.concat([sine.episode(s) for s in specs]))


# ---- torchvision (a tiny MNIST written in its raw idx format) ----


def write_idx(path: Path, array: np.ndarray) -> None:
    """Uncompressed idx file as torchvision's MNIST reader expects (uint8 data, big-endian dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """10 classes x 12 images (8 in train, 4 in t10k), except class 8 with 3 + 4: a ragged class."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 8), ("t10k", 4)):
        labels = np.repeat(np.arange(10), per_class)
        if prefix == "train":
            labels = np.concatenate([labels[labels != 8], [8, 8, 8]])
        # Each image holds its label as brightness so we can check the label -> class mapping.
        images = np.repeat(labels * 20, 28 * 28).reshape(-1, 28, 28) + rng.integers(0, 5, (len(labels), 28, 28))
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path


def test_torchvision_mnist_from_raw_files(tiny_mnist: Path) -> None:
    source = get_source("torchvision:MNIST", root=str(tiny_mnist), download=False)
    assert isinstance(source, TorchvisionSource)
    assert source.x_shape == (1, 32, 32) and len(source.images) == 115
    assert source.num_classes("train") == 6 and source.num_classes("test") == 4
    shuffled = np.random.default_rng(0).permutation(10)  # the 60/40 rule: [4 6 2 7 3 5 | 9 0 8 1]
    assert source.split_classes["train"].tolist() == sorted(shuffled[:6].tolist())
    assert source.split_classes["test"].tolist() == [0, 1, 8, 9]
    assert source.samples_per_class("train") == 12 and source.samples_per_class("test") == 7
    assert "6" in source.describe() and "\n" not in source.describe()

    spec = EpisodeSpec(dataset="torchvision:MNIST", split="test", tasks=4, train_shots=4, test_shots=3, seed=1)
    ep = source.episode(spec)
    assert ep.stream_x.shape == (1, 16, 1, 32, 32) and ep.query_x.shape == (1, 12, 1, 32, 32)
    assert set(ep.class_ids[0].tolist()) == {0, 1, 8, 9}
    # Brightness encodes the label: class k images sit near (k * 20 + 2) / 127.5 - 1.
    level = (ep.stream_x[0].mean(dim=(1, 2, 3)) + 1) * 127.5
    assert torch.allclose(level, ep.class_ids[0][ep.stream_task].float() * 20 + 2, atol=1.5)
    assert_episodes_equal(ep, source.episode(spec))

    # The ragged class: all 7 of its samples used, never a padding slot, never another class's image.
    labels = ((source.images.float().mean(dim=(1, 2, 3)) - 2) / 20).round().long()  # label of each pool image
    assert torch.bincount(labels).tolist() == [12] * 8 + [7, 12]
    batch = source.batch([spec.with_seed(s) for s in range(20)])
    ids = torch.cat([batch.train_sample_ids, batch.test_sample_ids], dim=2)  # (B, T, 7)
    assert (ids >= 0).all()
    assert (labels[ids] == batch.class_ids[:, :, None]).all()
    for b in range(20):
        for t in range(4):
            assert len(set(ids[b, t].tolist())) == 7

    message = one_line_error(source.episode, EpisodeSpec(**{**spec.to_dict(), "train_shots": 3, "test_shots": 10}))
    assert "7 samples in its smallest class; 3 train + 10 test shots need 13" in message
    assert "4 classes; 5 tasks need 5" in one_line_error(source.episode, EpisodeSpec(**{**spec.to_dict(), "tasks": 5}))

    rgb = get_source("torchvision:MNIST", root=str(tiny_mnist), channels=3)
    assert rgb.x_shape == (3, 32, 32) and rgb.episode(spec).stream_x.shape == (1, 16, 3, 32, 32)


def test_load_pool_reads_pil_datasets() -> None:
    """Datasets without a uint8 ``data`` array (Omniglot...) are read item by item as PIL images."""
    from PIL import Image

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return Image.fromarray(np.full((105, 105), 60 * i, dtype=np.uint8), mode="L"), i + 5

    images, labels = _load_pool(Items())
    assert images.shape == (3, 1, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [5, 6, 7]
    assert images[2].unique().tolist() == [120]
