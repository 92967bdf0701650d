"""Episode sources: where the classes, images and sine curves of an episode come from.

A source turns an :class:`EpisodeSpec` into an :class:`Episode`. Everything an episode holds is a
pure function of its spec:

* class ids, label codes and sample ids are drawn on the CPU with
  ``np.random.default_rng([seed mod 2**64, split id])`` (the split is part of the seed, so the
  train and test draws of one seed differ); image sources draw the classes, then the codes, then
  the samples, then the noise seed (sine: task and sample parameters, then the noise seed);
* input noise (``spec.noise_std``) comes from a CPU ``torch.Generator`` seeded with the last draw
  of that rng, and is moved to the device afterwards, so CPU and GPU give the same episode.

Image sources keep their whole pool as one uint8 tensor ``(P, C, 32, 32)`` (on the device after
``to(device)``); a batch of episodes is one index-gather into it. Pixels are scaled to [-1, 1] as
``x * (2/255) - 1`` (a multiply, not a divide, so CPU and CUDA round alike); noise is added after.

Reading order, one idea a module:

1. ``base``: the ``EpisodeSource`` interface, its checks, the episode's generator and input noise.
2. ``images``: ``ImageSource``, classes of a uint8 image pool, one gather per batch.
3. ``omniglot``: the shipped Omniglot-mini pool and its alphabet split.
4. ``torchvision_datasets``: any ``torchvision.datasets`` class as a pool.
5. ``sine``: sine regression.
6. ``shifts``: a dataset's pool under a domain shift ("<dataset>:inverted", "<dataset>:noisy").
7. ``registry``: ``get_source``, a dataset name -> its cached source.

The task of each example (task-major layout) is ``mclstudio.data.layout``'s.
"""

from mclstudio.data.sources.base import SPLITS, EpisodeSource, episode_rng, input_noise
from mclstudio.data.sources.images import IMAGE_SIZE, ImageSource, convert_channels
from mclstudio.data.sources.omniglot import OMNIGLOT_MINI_SPLITS, ROTATIONS, OmniglotMini
from mclstudio.data.sources.registry import get_source
from mclstudio.data.sources.shifts import DOMAIN_SHIFTS, shifted_images, shifted_source
from mclstudio.data.sources.sine import SineSource
from mclstudio.data.sources.torchvision_datasets import TorchvisionSource, default_root

__all__ = [
    "DOMAIN_SHIFTS",
    "IMAGE_SIZE",
    "OMNIGLOT_MINI_SPLITS",
    "ROTATIONS",
    "SPLITS",
    "EpisodeSource",
    "ImageSource",
    "OmniglotMini",
    "SineSource",
    "TorchvisionSource",
    "convert_channels",
    "default_root",
    "episode_rng",
    "get_source",
    "input_noise",
    "shifted_images",
    "shifted_source",
]
