"""miniai.augment: summary counts, batch crop/flip, random erase/copy (statistics, determinism), capture_preds and TTA."""
import matplotlib
matplotlib.use('Agg')
import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.augment import (summary, show_image_batch, capture_preds, rand_erase, RandErase, rand_copy,
                            RandCopy, rand_crop_flip, RandCropFlip, tfm_batch, tta_preds, hflip)
from miniai.datasets import DataLoaders
from miniai.init import BatchTransformCB
from miniai.learner import Learner, TrainCB
from miniai.resnet import get_resnet


def _learn(model=None, n=48, bs=16):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    dl = [(x[i:i+bs], y[i:i+bs]) for i in range(0, n, bs)]
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4*28*28, 10))
    return Learner(model, DataLoaders(dl, dl), F.cross_entropy, lr=0.1, cbs=[TrainCB()]), x, y


def test_summary_counts_params_and_flops():
    learn, x, _ = _learn()
    sd = {k: v.clone() for k, v in learn.model.state_dict().items()}
    s = learn.summary()
    assert s.n_params == sum(p.numel() for p in learn.model.parameters())
    assert [r[0] for r in s.rows] == ['Conv2d', 'BatchNorm2d', 'ReLU', 'Flatten', 'Linear']
    assert s.rows[0][2] == (16, 4, 28, 28)
    # conv: 36 weights used at each of 28*28 output pixels + 4 biases; linear: each weight once
    assert s.rows[0][4] == pytest.approx((36*28*28 + 4)/1e6)
    assert s.rows[4][4] == pytest.approx((4*28*28*10 + 10)/1e6)
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, sd[k]), k   # no step, no BN update
    assert '|Conv2d|' in s.markdown() and s._repr_markdown_() == s.markdown()
    m = get_resnet()
    assert summary(m, torch.randn(2, 1, 28, 28)).n_params == sum(p.numel() for p in m.parameters())


def test_summary_bad_input():
    with pytest.raises(ValueError, match="needs an example batch"): summary(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Learner or an nn.Module"): summary("model")


def _candidates(img, padding):
    "Every crop (and flipped crop) of the zero-padded image."
    h, w = img.shape[-2:]
    p = F.pad(img, (padding,)*4)
    out = []
    for i in range(2*padding + 1):
        for j in range(2*padding + 1):
            c = p[..., i:i+h, j:j+w]
            out += [c, c.flip(-1)]
    return out


def test_rand_crop_flip_is_a_crop_and_flip_of_each_image():
    x = torch.rand(12, 2, 9, 7, dtype=torch.float64)
    y = rand_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    for xi, yi in zip(x, y):
        assert any(torch.equal(yi, c) for c in _candidates(xi, 2))
    # identity without padding/flip; full flip possible; deterministic with a generator
    torch.testing.assert_close(rand_crop_flip(x, padding=0, flip=False), x)
    z = rand_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    n_flipped = sum(torch.equal(zi, xi.flip(-1)) for zi, xi in zip(z, x))
    assert 0 < n_flipped < len(x)
    y2 = RandCropFlip(padding=2, generator=torch.Generator().manual_seed(0))(x)
    assert torch.equal(y, y2)
    assert not torch.equal(y, rand_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(5)))


def test_rand_erase_statistics_and_determinism():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=g, dtype=torch.float64)
    e1 = rand_erase(x.clone(), pct=0.3, max_num=4, generator=torch.Generator().manual_seed(1))
    e2 = RandErase(pct=0.3, max_num=4, generator=torch.Generator().manual_seed(1))(x.clone())
    assert torch.equal(e1, e2)
    # noise from the batch's own mean/std: mean and std barely move even with rectangles erased
    outs = [rand_erase(x.clone(), pct=0.3, max_num=4, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    assert max((o != x).double().mean() for o in outs) > 0.05           # something was erased
    for o in outs:
        assert abs(o.mean() - x.mean()) < 0.02 and abs(o.std() - x.std()) < 0.03
        assert o.min() >= x.min() and o.max() <= x.max()
    # max_num=0: unchanged, and it works in place
    x0 = x.clone()
    assert rand_erase(x0, max_num=0) is x0 and torch.equal(x0, x)


def test_rand_copy_copies_pixels_deterministically():
    x = torch.arange(2*1*10*10, dtype=torch.float64).reshape(2, 1, 10, 10)
    outs = [rand_copy(x.clone(), pct=0.3, max_num=4, generator=torch.Generator().manual_seed(s)) for s in range(10)]
    assert any(not torch.equal(o, x) for o in outs)
    for o in outs: assert set(o.unique().tolist()) <= set(x.unique().tolist())   # only existing values, moved
    a = rand_copy(x.clone(), generator=torch.Generator().manual_seed(3))
    b = RandCopy(generator=torch.Generator().manual_seed(3))(x.clone())
    assert torch.equal(a, b)


@pytest.mark.parametrize("f", [rand_erase, rand_copy])
def test_aug_bad_input(f):
    with pytest.raises(ValueError, match="pct must be in"): f(torch.zeros(1, 1, 4, 4), pct=1.5)
    with pytest.raises(ValueError, match="max_num must be"): f(torch.zeros(1, 1, 4, 4), max_num=-1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"): f(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="must be a tensor"): rand_crop_flip([[0.]])


def test_capture_preds_and_tta_match_the_model():
    learn, x, y = _learn()
    learn.fit(1)
    m = learn.model.eval()
    with torch.no_grad(): ref, ref_flip = m(x), m(x.flip(-1))
    preds, targs, inps = capture_preds(learn, inps=True)
    torch.testing.assert_close(preds, ref); assert torch.equal(targs, y) and torch.equal(inps, x)
    p, t = tta_preds(learn)
    torch.testing.assert_close(p, (ref + ref_flip)/2)
    p, _ = tta_preds(learn, tfms=(lambda o: o,))
    torch.testing.assert_close(p, ref)


def test_show_image_batch_shows_transformed_batch_without_stepping():
    learn, x, _ = _learn()
    sd = {k: v.clone() for k, v in learn.model.state_dict().items()}
    fig = show_image_batch(learn, max_n=4, cbs=[BatchTransformCB(lambda b: tfm_batch(b, tfm_x=hflip))])
    assert len([a for a in fig.axes if a.images]) == 4
    assert np.array_equal(np.asarray(fig.axes[0].images[0].get_array()), x[0, 0].flip(-1).numpy())
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, sd[k]), k
