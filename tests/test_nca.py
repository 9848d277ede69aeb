"Tests for miniai.nca: the perception filters against their definitions, the stochastic update, the pool and the training step."
from types import SimpleNamespace

import pytest
import torch

from miniai.nca import perception_filters, perceive, SimpleCA, NCAPool, NCATrainCB


def roll(x, dy, dx): return torch.roll(x, shifts=(-dy, -dx), dims=(2, 3))   # [i, j] -> x[i+dy, j+dx] on a torus


def test_filters_are_their_definitions():
    f = perception_filters(torch.float64)
    assert f.shape == (4, 3, 3)
    torch.testing.assert_close(f[0], torch.tensor([[0, 0, 0], [0, 1., 0], [0, 0, 0]], dtype=torch.float64))
    torch.testing.assert_close(f[1], torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1.]], dtype=torch.float64) / 8)
    torch.testing.assert_close(f[2], f[1].T)
    torch.testing.assert_close(f[3], torch.tensor([[1, 2, 1], [2, -12, 2], [1, 2, 1.]], dtype=torch.float64) / 16)
    assert f[1:].sum((1, 2)).abs().max() < 1e-12   # gradients and Laplacian vanish on constant grids


def test_perceive_on_a_torus():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    r = lambda dy, dx: roll(x, dy, dx)
    sx = (r(-1, 1) + 2 * r(0, 1) + r(1, 1) - r(-1, -1) - 2 * r(0, -1) - r(1, -1)) / 8
    sy = (r(1, -1) + 2 * r(1, 0) + r(1, 1) - r(-1, -1) - 2 * r(-1, 0) - r(-1, 1)) / 8
    lap = (r(-1, -1) + r(-1, 1) + r(1, -1) + r(1, 1) + 2 * (r(-1, 0) + r(1, 0) + r(0, -1) + r(0, 1)) - 12 * x) / 16
    p = perceive(x)
    assert p.shape == (2, 12, 5, 6)
    p = p.reshape(2, 3, 4, 5, 6)   # channel-major: channel c's four filters are 4c..4c+3
    for k, want in enumerate([x, sx, sy, lap]): torch.testing.assert_close(p[:, :, k], want)
    ramp = torch.arange(6.)[None, None, None].expand(1, 1, 4, 6).double()
    torch.testing.assert_close(perceive(ramp)[0, 1, :, 2:4], torch.full((4, 2), 1., dtype=torch.float64))  # (1+2+1) * (x[j+1]-x[j-1]) / 8 = 1


def test_update_is_stochastic_and_seeded():
    torch.manual_seed(0)
    ca = SimpleCA(n_channels=4, n_hidden=8, zero_w2=False)
    x = torch.randn(3, 4, 8, 8)
    assert torch.equal(SimpleCA(4, 8)(x), x)   # zero_w2: identity at first
    a = ca(x, generator=torch.Generator().manual_seed(1))
    b = ca(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    mask = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.5
    updated = (a != x).any(1, keepdim=True)
    assert torch.equal(updated, mask.floor().bool())   # exactly the cells whose draw + rate >= 1
    ca.update_rate = 1.
    assert (ca(x) != x).any(1).all()
    with pytest.raises(ValueError, match='update_rate'): SimpleCA(update_rate=0)
    with pytest.raises(ValueError, match=r'\(B, 4, H, W\)'): ca(torch.randn(1, 3, 8, 8))


def test_pool_and_training_step():
    torch.manual_seed(0)
    ca = SimpleCA(n_channels=4, n_hidden=8, zero_w2=False)
    pool = NCAPool(ca, n=6, size=8)
    pool.grids += torch.arange(6.)[:, None, None, None]   # tell the grids apart
    cb = NCATrainCB(pool, bs=3, steps=(2, 3), reseed=1, generator=torch.Generator().manual_seed(0))
    learn = SimpleNamespace(model=ca, loss_func=lambda rgb: rgb.square().mean())
    cb.predict(learn)
    idx = cb.idx
    assert learn.preds.shape == (3, 4, 8, 8)
    cb.get_loss(learn)
    x = learn.preds
    torch.testing.assert_close(learn.loss, x[:, :3].square().mean() + 10 * (x - x.clamp(-1, 1)).abs().mean())
    cb.backward(learn)
    for p in ca.parameters(): assert abs(float(p.grad.norm()) - 1) < 1e-4   # normalised per tensor
    learn.opt = torch.optim.SGD(ca.parameters(), lr=0.01)
    cb.step(learn)
    torch.testing.assert_close(pool.grids[idx], x.detach())
    others = [i for i in range(6) if i not in idx.tolist()]
    assert all(float(pool.grids[i].mean()) == i for i in others)
    with pytest.raises(ValueError, match='reseed'): NCATrainCB(pool, bs=2, reseed=3)
