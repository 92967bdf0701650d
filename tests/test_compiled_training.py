"""The compiled training path (``Learner.compile_training``, ``ConvEncoder.compile_training``): same values
and gradients as the plain modules, checkpoints' keys unchanged, inference untouched. torch.compile's "aot_eager"
backend traces the same graph and autograd as the GPU's inductor without a C++ compiler, so this runs
in seconds on the CPU."""

from __future__ import annotations

import torch

from mclstudio.learners.encoders import ConvEncoder


def _values_and_grads(encoder: ConvEncoder, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = encoder(x)
    weights = torch.arange(out.shape[-1], dtype=out.dtype)  # every output feature counts differently
    return out.detach(), list(torch.autograd.grad((out * weights).sum(), list(encoder.parameters())))


def test_compiled_training_path_matches_the_modules() -> None:
    torch.manual_seed(0)
    encoder = ConvEncoder(1, 16, 8, 16)
    x = torch.rand(3, 1, 16, 16)
    expected, expected_grads = _values_and_grads(encoder, x)
    keys = list(encoder.state_dict())
    encoder.compile_training(backend="aot_eager")
    got, got_grads = _values_and_grads(encoder, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    assert expected_grads[0].abs().max() > 1e-3  # the first conv's gradient is not trivially zero
    assert list(encoder.state_dict()) == keys  # a checkpoint of a compiled run loads anywhere
    assert [name for name, _ in encoder.named_modules()] == [name for name, _ in ConvEncoder(1, 16, 8, 16).named_modules()]
    with torch.no_grad():  # inference does not go through the compiled function
        torch.testing.assert_close(encoder(x), expected, rtol=0, atol=0)


def test_compiled_path_is_the_one_taken_under_autograd() -> None:
    """A planted difference in the compiled function shows in the training path only."""
    torch.manual_seed(1)
    encoder = ConvEncoder(1, 16, 4, 16)  # 16x16: the last GroupNorm sees 2x2 pixels, not one (all zeros)
    x = torch.rand(2, 1, 16, 16)
    encoder.__dict__["_compiled_features"] = lambda images: encoder.features(images) * 2
    with torch.no_grad():
        plain = encoder(x)
    doubled = encoder(x)
    projected = encoder.project(encoder.features(x).flatten(1) * 2)
    torch.testing.assert_close(doubled.detach(), projected.detach())
    assert (doubled.detach() - plain).abs().max() > 1e-3


def test_compiled_longhorn_trains_as_the_plain_one() -> None:
    """Learner.compile_training on Longhorn (the encoder and every layer's transition): logits, rows and
    every gradient of a loss as without it; inference does not call the compiled transition."""
    from mclstudio.learners.longhorn import LonghornConfig, LonghornLearner

    torch.manual_seed(2)
    learner = LonghornLearner(LonghornConfig(d_model=16, n_layers=2, x_shape=(1, 16, 16), y_vocab=5, encoder_channels=16))
    stream_x, stream_y, query_x = torch.rand(2, 6, 1, 16, 16), torch.randint(0, 5, (2, 6)), torch.rand(2, 4, 1, 16, 16)

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = learner(stream_x, stream_y, query_x, with_rows=True)
        loss = out.logits.logsumexp(-1).sum() + sum((r * torch.arange(r.shape[-1])).sum() for r in out.rows)
        return loss.detach(), list(torch.autograd.grad(loss, list(learner.parameters())))

    expected, expected_grads = loss_and_grads()
    learner.compile_training(backend="aot_eager")
    assert all(layer.mixer.__dict__["_compiled_transition"] is not None for layer in learner.layers)
    got, got_grads = loss_and_grads()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):  # float32 sums in another order
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))
    assert sum(float(g.abs().sum()) for g in got_grads) > 0
