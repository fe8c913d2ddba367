"""Unit tests of the DiT360 training losses (pano360_training.losses), CPU only."""

from __future__ import annotations

import pytest
import torch
from pano360_training import losses as L
from pano360_training.randomness import data_order, draw_sample, sample_generator


def _pair(seed=0, b=2, c=4, h=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, 2 * h, generator=g), torch.randn(b, c, h, 2 * h, generator=g)


def test_base_loss_and_mask():
    p, t = _pair()
    assert torch.allclose(L.base_loss(p, t), torch.nn.functional.mse_loss(p, t))
    per = L.base_loss(p, t, reduction="none")
    assert per.shape == (2,) and torch.allclose(per.mean(), L.base_loss(p, t))
    mask = torch.zeros(2, 1, 8, 16)
    mask[..., :4, :] = 1
    ref = ((p - t) ** 2)[..., :4, :].flatten(1).mean(1)
    torch.testing.assert_close(L.base_loss(p, t, mask, reduction="none"), ref)
    with pytest.raises(ValueError, match="shape"):
        L.base_loss(p, t[:, :3])


@pytest.mark.parametrize("cols", [2, 6, 15])
def test_published_yaw_loss_is_the_base_loss_for_whole_column_rolls(cols):
    """DESIGN.md section 5: rotating prediction and target by whole latent columns permutes both,
    so the published yaw loss equals the base loss (float summation order only)."""
    p, t = _pair(1, h=16)
    angle = cols * 360.0 / p.shape[-1]
    yaw = L.yaw_loss_published(p, t, angle)
    torch.testing.assert_close(yaw, L.base_loss(p, t), rtol=1e-6, atol=1e-7)
    # ... and a non-whole-column angle (DiT360's 60 deg on this width) only blurs: close but not equal
    blurred = L.yaw_loss_published(p, t, 60.0)
    assert not torch.allclose(blurred, L.base_loss(p, t), rtol=1e-4)
    assert 0.3 < float(blurred / L.base_loss(p, t)) < 1.0  # interpolation averages the error down


def test_published_yaw_loss_rotation_is_differentiable_and_per_item():
    p, t = _pair(2, h=8)
    p.requires_grad_(True)
    loss = L.yaw_loss_published(p, t, torch.tensor([60.0, 180.0]), reduction="none")
    assert loss.shape == (2,)
    loss.sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


class _CircularConv(torch.nn.Module):
    """Yaw-equivariant toy model: a conv that wraps horizontally (and pads rows with zeros)."""

    def __init__(self, c):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(c, c, 3, padding=0)

    def forward(self, x):
        x = torch.nn.functional.pad(x, (1, 1, 0, 0), mode="circular")
        x = torch.nn.functional.pad(x, (0, 0, 1, 1))
        return self.conv(x)


def test_yaw_equivariance_loss():
    x, t = _pair(3, h=8)
    model = _CircularConv(x.shape[1])
    # an equivariant model: the rotated problem has the same loss as the unrotated one
    base = L.base_loss(model(x), t)
    eq = L.yaw_loss_equivariance(model, x, t, cols=torch.tensor([4, 10]))
    torch.testing.assert_close(eq, base, rtol=1e-5, atol=1e-6)
    # a model that knows absolute longitude (a fixed positional bias) is not: the loss differs
    bias = torch.linspace(-1, 1, x.shape[-1])

    def positional(z):
        return model(z) + bias

    base_p = L.base_loss(positional(x), t)
    eq_p = L.yaw_loss_equivariance(positional, x, t, cols=4)
    assert abs(float((eq_p - base_p).detach())) > 1e-3
    # while the published loss cannot see the difference (it never re-evaluates the model)
    pub = L.yaw_loss_published(positional(x), t, 4 * 360.0 / x.shape[-1])
    torch.testing.assert_close(pub, base_p, rtol=1e-6, atol=1e-7)


def test_cube_loss_weights_by_solid_angle_and_is_differentiable():
    h = 16
    t = torch.zeros(1, 2, h, 2 * h)
    # a constant error everywhere: every face pixel sees it, the cube loss equals the base loss
    p = t + 0.5
    torch.testing.assert_close(L.cube_loss(p, t), L.base_loss(p, t), rtol=1e-5, atol=1e-6)
    assert float(L.cube_loss(t, t)) == 0.0
    # an error band at the poles (over-sampled in ERP) weighs less than the same band at the equator
    pole = t.clone()
    pole[..., :2, :] = 1.0
    pole[..., -2:, :] = 1.0
    eq = t.clone()
    eq[..., h // 2 - 2 : h // 2 + 2, :] = 1.0
    assert torch.allclose(L.base_loss(pole, t), L.base_loss(eq, t))
    ratio_pole = float(L.cube_loss(pole, t) / L.base_loss(pole, t))
    ratio_eq = float(L.cube_loss(eq, t) / L.base_loss(eq, t))
    assert ratio_pole < 0.5 * ratio_eq
    # gradients reach the prediction (faces of H/2 latent pixels)
    q = torch.randn(2, 3, h, 2 * h, requires_grad=True)
    L.cube_loss(q, torch.zeros_like(q)).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="2 x height"):
        L.cube_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_perspective_loss_only_sees_the_coverage():
    p, t = _pair(4, b=1, h=8)
    cov_px = torch.zeros(1, 1, 64, 128)
    cov_px[..., 16:48, 40:72] = 1
    cov = L.latent_mask(cov_px, (8, 16))
    assert cov.sum() == 4 * 4 and cov.max() == 1
    p = p.clone().requires_grad_(True)
    loss = L.perspective_loss(p, t, cov)
    ref = ((p - t) ** 2)[..., 2:6, 5:9].mean()
    torch.testing.assert_close(loss, ref)
    loss.backward()
    outside = p.grad * (1 - cov)
    assert outside.abs().sum() == 0 and p.grad.abs().sum() > 0
    # no coverage: zero, not NaN
    assert float(L.perspective_loss(p.detach(), t, torch.zeros_like(cov))) == 0.0


def test_draws_depend_only_on_seed_and_index():
    a = draw_sample(0, 5, token_cols=16, flip_p=0.5, yaw_roll=True, caption_dropout=0.1, yaw_angles=(60, 180, 300))
    b = draw_sample(0, 5, token_cols=16, flip_p=0.5, yaw_roll=True, caption_dropout=0.1, yaw_angles=(60, 180, 300))
    c = draw_sample(0, 6, token_cols=16, flip_p=0.5, yaw_roll=True, caption_dropout=0.1, yaw_angles=(60, 180, 300))
    assert repr(a) == repr(b) and repr(a) != repr(c)
    n1 = torch.randn(3, generator=sample_generator(1, 9, "noise"))
    torch.manual_seed(123)  # the global stream does not matter
    n2 = torch.randn(3, generator=sample_generator(1, 9, "noise"))
    assert torch.equal(n1, n2)
    flips = [draw_sample(0, i, token_cols=16, flip_p=0.5, yaw_roll=False, caption_dropout=0).flip for i in range(400)]
    assert 150 < sum(flips) < 250
    rolls = {draw_sample(0, i, token_cols=16, flip_p=0, yaw_roll=True, caption_dropout=0).roll for i in range(400)}
    assert rolls == set(range(16))
    o = data_order(0, 3, 10)
    assert sorted(o.tolist()) == list(range(10)) and torch.equal(o, data_order(0, 3, 10))
    assert not torch.equal(o, data_order(0, 4, 10))
