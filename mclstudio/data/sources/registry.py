"""``get_source``: a dataset name -> its (cached, CPU) source."""

from __future__ import annotations

from pathlib import Path

from mclstudio.data.episodes import DataError
from mclstudio.data.sources.base import EpisodeSource
from mclstudio.data.sources.omniglot import OmniglotMini
from mclstudio.data.sources.shifts import DOMAIN_SHIFTS, shifted_source
from mclstudio.data.sources.sine import SineSource
from mclstudio.data.sources.torchvision_datasets import TorchvisionSource, default_root

_CACHE: dict[tuple[str, str | None, int | None], EpisodeSource] = {}


def get_source(
    dataset: str, root: str | None = None, download: bool = False, channels: int | None = None
) -> EpisodeSource:
    """The (cached, CPU) source for ``dataset``: "omniglot-mini", "sine" or "torchvision:<Name>", or an
    image dataset under a domain shift, "<dataset>:inverted" or "<dataset>:noisy" (see ``shifted_images``).

    root: folder for torchvision datasets (default $MCLSTUDIO_DATA or ~/.cache/mclstudio/data).
    download: let torchvision fetch a missing dataset. channels: 1 or 3 to convert images to
    grey / RGB (default: the dataset's own). Call ``.to(device)`` on the result for GPU sampling.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, not {channels}")
    base, _, shift = dataset.rpartition(":")
    if base and shift in DOMAIN_SHIFTS:
        key: tuple[str, str | None, int | None] = (dataset, root, channels)
        if key not in _CACHE:
            _CACHE[key] = shifted_source(get_source(base, root, download, channels), shift)
        return _CACHE[key]
    if dataset == "omniglot-mini":
        key = (dataset, None, channels)
        make = lambda: OmniglotMini(channels)  # noqa: E731
    elif dataset == "sine":
        if channels is not None:
            raise DataError("sine has no image channels; leave channels unset")
        key = (dataset, None, None)
        make = SineSource
    elif dataset.startswith("torchvision:") and dataset.removeprefix("torchvision:"):
        name = dataset.removeprefix("torchvision:")
        root = str(Path(root or default_root()).expanduser().resolve())
        key = (dataset, root, channels)
        make = lambda: TorchvisionSource(name, root, download=download, channels=channels)  # noqa: E731
    else:
        raise DataError(
            f"unknown dataset {dataset!r}; choose omniglot-mini, sine or torchvision:<Name>, "
            f"optionally followed by :{' or :'.join(DOMAIN_SHIFTS)} for an image dataset"
        )
    if key not in _CACHE:
        _CACHE[key] = make()  # a failed load raises and caches nothing
    return _CACHE[key]
