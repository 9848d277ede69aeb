"Tests for miniai.multilabel: the derived data sets, BCE, accuracy_multi and F-beta against scikit-learn, the threshold choice."
import math

import pytest
import torch
import torch.nn.functional as F

from miniai.multilabel import (AccuracyMulti, FBetaMulti, accuracy_multi, bce_multi, best_threshold, fbeta_multi, make_mosaics,
                               make_point_data)


def items(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_mosaics_labels_and_masks():
    ims, lbs = items()
    x, y, m = make_mosaics(ims, lbs, 30, n_classes=5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (30, 16, 16) and y.shape == (30, 5) and m.shape == (30, 16, 16)
    for i in range(30):
        filled = [(r, c) for r in range(2) for c in range(2) if x[i, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].any()]
        assert 2 <= len(filled) <= 4 or ims.eq(0).all()
        present = set(m[i].unique().tolist()) - {0}
        assert present <= {int(k) + 1 for k in y[i].nonzero().flatten()}
        assert torch.equal(m[i] > 0, x[i] > 0.2 * 255)
    x2, y2, m2 = make_mosaics(ims, lbs, 30, n_classes=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and torch.equal(y, y2)   # seeded
    with pytest.raises(ValueError, match='n_items'): make_mosaics(ims, lbs, 2, n_items=(3, 5))


def test_point_data_targets_are_centres():
    ims, _ = items()
    ims = ims.clamp_min(1)                          # every pixel of an item is non-zero: its box is where x > 0
    x, t = make_point_data(ims, 10, size=24, generator=torch.Generator().manual_seed(0))
    for i in range(10):
        rows, cols = (x[i] > 0).nonzero().unbind(1)
        cx, cy = (cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2
        torch.testing.assert_close(t[i], torch.stack([cx, cy]).float() / 24 * 2 - 1)
    assert t.abs().max() <= 1


def test_metrics_against_sklearn():
    skm = pytest.importorskip('sklearn.metrics')
    g = torch.Generator().manual_seed(0)
    logits, targs = torch.randn(64, 6, generator=g), (torch.rand(64, 6, generator=g) > 0.6).float()
    torch.testing.assert_close(bce_multi(logits, targs), F.binary_cross_entropy(logits.sigmoid(), targs))
    pred = (logits.sigmoid() > 0.4)
    assert math.isclose(float(accuracy_multi(logits, targs, thresh=0.4)), float((pred == targs.bool()).float().mean()))
    for avg in ('samples', 'macro', 'micro'):
        exp = skm.fbeta_score(targs.numpy(), pred.numpy(), beta=2, average=avg, zero_division=0)
        assert math.isclose(float(fbeta_multi(logits, targs, 2., 0.4, average=avg)), exp, rel_tol=1e-9, abs_tol=1e-12), avg
    am, fm = AccuracyMulti(0.4), FBetaMulti(2., 0.4)
    for sl in (slice(0, 20), slice(20, 64)): am.update(logits[sl], targs[sl]); fm.update(logits[sl], targs[sl])
    assert math.isclose(am.compute().item(), float(accuracy_multi(logits, targs, thresh=0.4)), rel_tol=1e-6)
    assert math.isclose(fm.compute().item(), float(fbeta_multi(logits, targs, 2., 0.4)), rel_tol=1e-6)
    with pytest.raises(ValueError, match='shape'): bce_multi(logits, targs[:, :3])


def test_best_threshold_maximises():
    g = torch.Generator().manual_seed(3)
    targs = (torch.rand(100, 4, generator=g) > 0.5).float()
    probs = (targs * 0.3 + torch.rand(100, 4, generator=g) * 0.5).clamp(0, 1)   # positives a little higher
    ts = torch.linspace(0.05, 0.95, 19).tolist()
    t, v = best_threshold(probs, targs)
    assert v == max(float(accuracy_multi(probs, targs, thresh=x, sigmoid=False)) for x in ts) and t in ts
