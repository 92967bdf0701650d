"""Class-level augmentation of image episodes (meta-train split only; ``EpisodeSpec.augment``).

Against over-fitting the meta-train classes: every task's class gets one random transform, and every
image of that class in the episode (stream and queries) gets that same transform, so a class stays
one consistent class but looks new from episode to episode. Per class:

* a horizontal flip (probability 1/2) and, for sources whose pool does not already hold rotated
  classes, a rotation by k * 90 degrees: these make NEW classes (a mirrored character is another
  character), as Omniglot's meta-train split already adds rotations;
* a small random affine: rotation in +-ROTATE_DEG, scale in 1 +- SCALE, shear in +-SHEAR_DEG,
  translation in +-TRANSLATE (of the half-width, i.e. about 2.4 pixels at 32x32);
* stroke width: one of thicker (3x3 grey dilation of the bright strokes), unchanged, or thinner
  (ink intensity squared: antialiased stroke edges fade; a 3x3 erosion would erase Omniglot-mini's
  1-2 pixel strokes).

Parameters are drawn on the CPU from ``np.random.default_rng([seed, split id, AUGMENT_SALT])``, a
stream apart from the episode's other draws, so an augmented episode has the same classes, codes
and samples as the plain one. The pixels are transformed in one batched ``grid_sample`` on the
device that holds the images (flip, 90-degree rotation and affine compose into one 2x3 matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mclstudio.data.episodes import EpisodeSpec

AUGMENT_SALT = 3
ROTATE_DEG = 15.0
SCALE = 0.15
SHEAR_DEG = 10.0
TRANSLATE = 0.15


def draw_class_transforms(spec: EpisodeSpec, new_class_rotations: bool) -> np.ndarray:
    """The transform of each task's class in ``spec``'s episode, (T, 7) float64: the 2x3 affine matrix
    (output -> input coordinates, as ``F.affine_grid`` takes it) row-major, then the stroke change
    in {-1, 0, +1}. ``new_class_rotations``: also draw 90-degree rotations."""
    split_salt = 0 if spec.split == "train" else 1
    rng = np.random.default_rng([spec.seed % 2**64, split_salt, AUGMENT_SALT])
    t = spec.tasks
    flip = rng.integers(0, 2, t)
    quarter = rng.integers(0, 4, t) if new_class_rotations else np.zeros(t, dtype=np.int64)
    angle = np.deg2rad(rng.uniform(-ROTATE_DEG, ROTATE_DEG, t))
    scale = rng.uniform(1 - SCALE, 1 + SCALE, t)
    shear = np.deg2rad(rng.uniform(-SHEAR_DEG, SHEAR_DEG, t))
    shift = rng.uniform(-TRANSLATE, TRANSLATE, (t, 2))
    stroke = rng.integers(-1, 2, t)

    out = np.zeros((t, 7))
    for i in range(t):
        out[i, :6] = class_matrix(bool(flip[i]), int(quarter[i]), angle[i], scale[i], shear[i], shift[i]).reshape(-1)
        out[i, 6] = stroke[i]
    return out


def class_matrix(
    flip: bool, quarter: int, angle: float, scale: float, shear: float, shift: np.ndarray | tuple[float, float]
) -> np.ndarray:
    """(2, 3) affine matrix, output -> input coordinates in [-1, 1]: a mirror in x (flip), ``quarter``
    quarter turns, rotation by ``angle`` and shear by ``shear`` (radians), zoom by ``scale``, and a
    shift (dx, dy). The flip and quarter turns alone give an exact 0/+-1 matrix."""
    dihedral = np.array([[-1.0, 0.0], [0.0, 1.0]]) if flip else np.eye(2)
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter]
    dihedral = np.array([[c, -s], [s, c]], dtype=np.float64) @ dihedral
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shear_m = np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
    linear = dihedral @ rot @ shear_m / scale
    return np.concatenate([linear, np.asarray(shift, dtype=np.float64)[:, None]], axis=1)


@dataclass
class ClassTransforms:
    """The transforms of a batch: theta (B, T, 2, 3) float32 and stroke (B, T) int64, on the device."""

    theta: Tensor
    stroke: Tensor

    @staticmethod
    def stack(drawn: list[np.ndarray], device: torch.device) -> ClassTransforms:
        """B arrays from ``draw_class_transforms`` -> one ClassTransforms on ``device``."""
        packed = torch.from_numpy(np.stack(drawn))  # (B, T, 7) float64
        theta = packed[..., :6].reshape(*packed.shape[:2], 2, 3).float().to(device)
        return ClassTransforms(theta=theta, stroke=packed[..., 6].long().to(device))


def apply(x: Tensor, task: Tensor, transforms: ClassTransforms) -> Tensor:
    """x (B, n, C, H, W) in [-1, 1], task (n,) task index of each image -> x transformed by its class's
    transform (B, n, C, H, W). One grid_sample for all B * n images."""
    b, n, c, h, w = x.shape
    flat = x.reshape(b * n, c, h, w)
    theta = transforms.theta[:, task].reshape(b * n, 2, 3)
    grid = F.affine_grid(theta, [b * n, c, h, w], align_corners=False)
    # Border padding: what comes in from outside the frame is the edge, i.e. the background.
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    stroke = transforms.stroke[:, task].reshape(b * n, 1, 1, 1)
    ink = (out + 1) * 0.5  # [0, 1]
    thicker = F.max_pool2d(ink, 3, stride=1, padding=1)
    ink = torch.where(stroke > 0, thicker, torch.where(stroke < 0, ink * ink, ink))
    return (ink * 2 - 1).reshape(b, n, c, h, w)
