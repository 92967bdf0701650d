"""Token embeddings: how x and y examples become d_model vectors.

Images go through a small CNN trained jointly with the learner (Lee et al.'s choice); vectors (sine
regression) through an MLP. Labels are codes looked up in an embedding table; regression targets go
through a linear map. The stream is laid out as separate interleaved tokens x1, y1, x2, y2, ...
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mclstudio.learners.kernels.conv_block import conv_gn_relu_pool, fused_block_supported


class ConvEncoder(nn.Module):
    """Four conv-GroupNorm-ReLU blocks, each halving the image while it is larger than 1 pixel, then a
    linear map to d_model (32x32 -> 2x2 x channels).

    GroupNorm rather than BatchNorm: an example's embedding must not depend on the others in the batch,
    so that streaming one example at a time gives exactly what the parallel pass gives.
    (B, C, H, W) -> (B, d_model)
    """

    def __init__(self, in_channels: int, channels: int, d_model: int, image_size: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        side = image_size
        for _ in range(4):
            blocks += [nn.Conv2d(c_in, channels, 3, padding=1), nn.GroupNorm(min(8, channels), channels), nn.ReLU()]
            if side >= 2:
                blocks.append(nn.MaxPool2d(2))
                side //= 2
            c_in = channels
        self.features = nn.Sequential(*blocks)
        self.project = nn.Linear(channels * side * side, d_model)
        # features through torch.compile for training (``compile_training``); kept out of the module
        # tree so that checkpoints' keys do not change
        self.__dict__["_compiled_features"] = None

    def compile_training(self, backend: str = "inductor") -> None:
        """Run ``features`` under autograd through torch.compile: GroupNorm, ReLU and pooling fused
        forward and backward (the convolutions stay cuDNN's), which made a paper-sized Mamba's training
        step 1.3x faster on an H200 (benchmarks/train_speed.py). Inference keeps the fused kernels."""
        self.__dict__["_compiled_features"] = torch.compile(self.features, backend=backend)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda and not torch.is_grad_enabled():
            return self.project(self._fused_features(x).flatten(1))
        compiled = self.__dict__["_compiled_features"]
        if compiled is not None and torch.is_grad_enabled():
            return self.project(compiled(x).flatten(1))
        return self.project(self.features(x).flatten(1))

    def _fused_features(self, x: Tensor) -> Tensor:
        """``features`` for CUDA inference, each pooled block as one op (``kernels.conv_block``): its
        GroupNorm, ReLU and pooling in one kernel, and with few input channels the convolution too (it is
        then memory traffic, not arithmetic). Blocks the kernel does not take run as modules."""
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        modules = list(self.features)
        h, k = x, 0
        while k < len(modules):
            conv, norm = modules[k], modules[k + 1]
            pooled = k + 3 < len(modules) and isinstance(modules[k + 3], nn.MaxPool2d)
            size = 4 if pooled else 3
            if pooled and fused_block_supported(h, norm.num_groups, conv.out_channels):
                h = conv_gn_relu_pool(h, conv.weight, conv.bias, norm.weight, norm.bias, norm.num_groups, norm.eps, dtype)
            else:
                for module in modules[k : k + size]:
                    h = module(h)
            k += size
        return h


class VectorEncoder(nn.Module):
    """(B, x_dim) -> (B, d_model): a two-layer MLP."""

    def __init__(self, x_dim: int, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TokenEmbedding(nn.Module):
    """Embeds x inputs and y labels/targets into d_model tokens and interleaves them.

    x_shape: (C, H, W) for images, (x_dim,) for vectors.
    y_vocab > 0: classification with that many label codes; otherwise regression with y_dim targets.
    """

    def __init__(
        self, x_shape: tuple[int, ...], d_model: int, y_vocab: int, y_dim: int, encoder_channels: int
    ) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        if len(self.x_shape) == 3:
            self.x_encoder: nn.Module = ConvEncoder(
                self.x_shape[0], encoder_channels, d_model, self.x_shape[-1]
            )
        elif len(self.x_shape) == 1:
            self.x_encoder = VectorEncoder(self.x_shape[0], d_model)
        else:
            raise ValueError(f"x_shape must be (C, H, W) or (x_dim,), not {self.x_shape}")
        self.y_embed: nn.Module = (
            nn.Embedding(y_vocab, d_model) if y_vocab > 0 else nn.Linear(y_dim, d_model)
        )
        self.y_scale = d_model**0.5

    def embed_x(self, x: Tensor) -> Tensor:
        """(..., *x_shape) -> (..., d_model)"""
        lead = x.shape[: x.dim() - len(self.x_shape)]
        flat = x.reshape(-1, *self.x_shape)
        return self.x_encoder(flat).reshape(*lead, -1)

    def embed_y(self, y: Tensor) -> Tensor:
        """(...) int64 codes or (..., y_dim) float targets -> (..., d_model)"""
        if isinstance(self.y_embed, nn.Embedding):
            # The table is shared with the output head and kept small for unit-scale logits; scaled up
            # here (as Vaswani et al. scale embeddings) so label tokens are not drowned by positions.
            return self.y_embed(y) * self.y_scale
        return self.y_embed(y)

    def interleave(self, hx: Tensor, stream_y: Tensor) -> Tensor:
        """x embeddings (B, N, D) and labels (B, N[, y_dim]) -> (B, 2N, D) as x1, y1, x2, y2, ..."""
        hy = self.embed_y(stream_y).to(hx.dtype)
        return torch.stack([hx, hy], dim=2).flatten(1, 2)

    def stream(self, stream_x: Tensor, stream_y: Tensor) -> Tensor:
        """(B, N, *x_shape), (B, N[, y_dim]) -> (B, 2N, d_model) as x1, y1, x2, y2, ..."""
        return self.interleave(self.embed_x(stream_x), stream_y)
