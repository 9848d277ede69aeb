"""miniai.fid: Fréchet distance against scipy.linalg.sqrtm, KID against the formula written with loops, ImageEval, the shipped classifier."""
import math, warnings

import numpy as np
import pytest
import torch
from torch import nn

from miniai.datasets import DataLoaders, SAMPLE_FMNIST, dataset_tensors, load_fashion_mnist
from miniai.fid import (FMNIST_CLASSIFIER, ImageEval, feature_stats, fid_from_features, fid_from_stats, fmnist_32,
                        fmnist_classifier, fmnist_classifier_model, kid_from_features, trace_sqrt_product)

f64 = torch.float64


def _spd(d, g, rank=None):
    a = torch.randn(d, rank or d, generator=g, dtype=f64)
    return a @ a.T / d


def _scipy_fid(mu1, c1, mu2, c2):
    import scipy.linalg
    s = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy())
    return float(((mu1 - mu2)**2).sum() + c1.trace() + c2.trace()) - 2 * float(np.real(np.trace(s)))


@pytest.mark.parametrize("d,seed", [(1, 0), (5, 1), (32, 2), (128, 3)])
def test_fid_matches_scipy_sqrtm(d, seed):
    g = torch.Generator().manual_seed(seed)
    c1, c2 = _spd(d, g) + 1e-3 * torch.eye(d, dtype=f64), _spd(d, g) + 1e-3 * torch.eye(d, dtype=f64)
    mu1, mu2 = torch.randn(d, generator=g, dtype=f64), torch.randn(d, generator=g, dtype=f64)
    ref = _scipy_fid(mu1, c1, mu2, c2)
    # tolerance: 1e-8 relative, float64 eigen-decompositions vs scipy's Schur-based sqrtm
    assert fid_from_stats(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8, abs=1e-9)


def test_trace_sqrt_product_low_rank_matches_scipy():
    # singular covariances (fewer samples than features) are the common case; eigenvalues must be clipped, not NaN
    g = torch.Generator().manual_seed(4)
    c1, c2 = _spd(20, g, rank=6), _spd(20, g, rank=9)
    import scipy.linalg
    ref = float(np.real(np.trace(scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()))))
    assert float(trace_sqrt_product(c1, c2)) == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_fid_gaussians_closed_form():
    # N(m1, diag(a)) vs N(m2, diag(b)): |m1-m2|^2 + sum (sqrt a - sqrt b)^2
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(10, generator=g, dtype=f64) + .1, torch.rand(10, generator=g, dtype=f64) + .1
    m1, m2 = torch.randn(10, generator=g, dtype=f64), torch.randn(10, generator=g, dtype=f64)
    ref = float(((m1 - m2)**2).sum() + ((a.sqrt() - b.sqrt())**2).sum())
    assert fid_from_stats(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(ref, rel=1e-10)


def test_feature_stats_match_numpy():
    f = torch.randn(50, 7, generator=torch.Generator().manual_seed(6))
    mu, cov = feature_stats(f)
    np.testing.assert_allclose(mu.numpy(), f.double().numpy().mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(f.double().numpy(), rowvar=False), rtol=1e-10, atol=1e-12)


def test_fid_same_features_is_zero_and_grows_with_shift():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(400, 16, generator=g, dtype=f64)
    assert abs(fid_from_features(x, x)) < 1e-8
    y = torch.randn(400, 16, generator=g, dtype=f64)
    fids = [fid_from_features(x, y + s) for s in (0., 0.5, 1., 2.)]
    assert fids == sorted(fids) and fids[-1] > 50 * fids[0]
    kids = [kid_from_features(x, y + s) for s in (0., 0.5, 1., 2.)]
    assert kids == sorted(kids) and abs(kids[0]) < 0.1 * kids[1]


def _kid_loops(x, y):
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (float(a @ b) / d + 1)**3
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


@pytest.mark.parametrize("m,n,d,seed", [(6, 9, 4, 0), (12, 5, 8, 1), (2, 2, 3, 2)])
def test_kid_matches_loop_formula(m, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(m, d, generator=g, dtype=f64), torch.randn(n, d, generator=g, dtype=f64) * 1.3 + 0.2
    assert kid_from_features(x, y) == pytest.approx(_kid_loops(x, y), rel=1e-10, abs=1e-12)


def test_kid_subsets():
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(30, 5, generator=g, dtype=f64), torch.randn(30, 5, generator=g, dtype=f64) + .3
    # one subset of everything is a permutation of the whole sets: the same value
    assert kid_from_features(x, y, subset_size=30) == pytest.approx(kid_from_features(x, y), rel=1e-10)
    # mean of subsets, reproduced by hand with the same generator draws
    gen = torch.Generator().manual_seed(1)
    ref = []
    for _ in range(3):
        ix, iy = torch.randperm(30, generator=gen)[:10], torch.randperm(30, generator=gen)[:10]
        ref.append(_kid_loops(x[ix], y[iy]))
    got = kid_from_features(x, y, n_subsets=3, subset_size=10, generator=torch.Generator().manual_seed(1))
    assert got == pytest.approx(sum(ref) / 3, rel=1e-10)


def test_bad_inputs():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="different feature sizes"): fid_from_features(x, torch.randn(5, 4))
    with pytest.raises(ValueError, match="different feature sizes"): kid_from_features(x, torch.randn(5, 4))
    with pytest.raises(ValueError, match="2-d"): feature_stats(torch.randn(5))
    with pytest.raises(ValueError, match="at least 2 samples"): kid_from_features(torch.randn(1, 3), x)
    with pytest.raises(ValueError, match="NaN or infinite"): fid_from_features(torch.full((4, 3), float('nan')), x)
    with pytest.raises(ValueError, match=r"covariance \(d, d\)"): fid_from_stats(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="subset_size"): kid_from_features(x, x, subset_size=9)
    with pytest.raises(ValueError, match="n_subsets"): kid_from_features(x, x, n_subsets=0)
    with pytest.raises(ValueError, match="n_subsets=5 needs a subset_size"): kid_from_features(x, x, n_subsets=5)  # not silently ignored
    with pytest.raises(ValueError, match="28, 28"): fmnist_32(torch.zeros(2, 3, 28, 28))
    with pytest.raises(TypeError, match="tensor"): fmnist_32(np.zeros((2, 28, 28)))
    with pytest.raises(FileNotFoundError, match="no classifier weights"): fmnist_classifier(path='/nonexistent/clf.pt')


def test_fmnist_32():
    x = torch.zeros(3, 28, 28, dtype=torch.uint8)
    x[:, 5, 7] = 255
    y = fmnist_32(x)
    assert y.shape == (3, 1, 32, 32) and y.dtype == torch.float32
    assert y[:, 0, 7, 9].eq(1).all() and (y.sum() == -(32 * 32 * 3) + 2 * 3)
    torch.testing.assert_close(fmnist_32(x.float() / 255), y)


@pytest.mark.filterwarnings("ignore:ImageEval.fid:UserWarning")  # 30-40 samples: the small-n warning is expected
def test_image_eval_matches_direct_computation():
    g = torch.Generator().manual_seed(9)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten())  # (B, 16) features
    real = torch.randn(40, 1, 8, 8, generator=g)
    with pytest.warns(UserWarning, match="real statistics come from only 40 images"):
        ie = ImageEval(model, DataLoaders([], [(real[:25], torch.zeros(25)), (real[25:], torch.zeros(15))]))
    with torch.no_grad(): fr = model(real)
    torch.testing.assert_close(ie.feats, fr)
    # shifted samples, kept inside the real images' value range (which ImageEval checks)
    samp = (torch.randn(30, 1, 8, 8, generator=g) + 0.5).clamp(float(real.min()), float(real.max()))
    with torch.no_grad(): fs = model(samp)
    assert ie.fid(samp) == pytest.approx(fid_from_features(fr, fs), rel=1e-5)
    assert ie.kid(samp) == pytest.approx(kid_from_features(fr, fs), rel=1e-5)
    assert abs(ie.fid(real)) < 1e-3
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"): ie.fid(torch.randn(30, 8, 8))


@pytest.fixture(scope='module')
def sample_test(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        dd = load_fashion_mnist(SAMPLE_FMNIST, cache=tmp_path_factory.mktemp('fmnist'))
    return dataset_tensors(dd['test'])


def test_shipped_classifier_accuracy(sample_test):
    assert FMNIST_CLASSIFIER.is_file()
    assert FMNIST_CLASSIFIER.stat().st_size < 5e6
    clf = fmnist_classifier()
    assert not clf.training
    x, y = sample_test
    with torch.no_grad(): acc = (clf(fmnist_32(x)).argmax(1) == y).float().mean().item()
    assert acc >= 0.85, acc
    feats = fmnist_classifier(head=False)
    with torch.no_grad(): f = feats(fmnist_32(x[:8]))
    assert f.shape == (8, clf[-2].in_features)


def test_classifier_model_features_shape():
    m = fmnist_classifier_model((4, 8, 8))
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert m[:-2](torch.randn(2, 1, 32, 32)).shape == (2, 8)
    with pytest.raises(ValueError, match="at least 2"): fmnist_classifier_model((4,))


# ---- ImageEval refuses samples that are not what its real images were ----

@pytest.fixture(scope='module')
def fmnist_ie(sample_test):
    "ImageEval with the shipped classifier on 1,280 real test images of the packaged sample (no warning: min_samples reached)."
    x, y = sample_test
    real = fmnist_32(x[:1280])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        return ImageEval(fmnist_classifier(head=False), DataLoaders([], [(real[i:i + 640], y[i:i + 640]) for i in (0, 640)])), x


def test_image_eval_records_what_real_images_look_like(fmnist_ie):
    ie, _ = fmnist_ie
    assert ie.real_shape == (1, 32, 32) and ie.real_dtype == torch.float32 and ie.real_range == (-1.0, 1.0)
    assert ie.min_samples == 10 * 128


@pytest.mark.parametrize("make,match", [
    (lambda x: x[:64, None].float() / 255, r"samples are \(1, 28, 28\) .* are \(1, 32, 32\).*fmnist_32"),          # 28x28, no padding
    (lambda x: (fmnist_32(x[:64]) + 1) / 2, r"only run from 0 to 1, 50% of the real images' range \[-1, 1\].*fmnist_32"),  # [0, 1]
    (lambda x: fmnist_32(x[:64]) / 2, r"only run from -0.5 to 0.5"),                                       # the course's [-0.5, 0.5]
    (lambda x: fmnist_32(x[:64]) * 127.5 + 127.5, r"outside the real images' range"),                     # 0-255 floats
    (lambda x: torch.nn.functional.pad(x[:64, None], (2, 2, 2, 2)), r"samples are torch.uint8, but the real images are torch.float32"),
    (lambda x: fmnist_32(x[:64]).expand(-1, 3, -1, -1), r"samples are \(3, 32, 32\)"),
    (lambda x: fmnist_32(x[:64]).masked_fill(torch.arange(64)[:, None, None, None] == 3, float('nan')), "NaN or infinite"),
])
def test_image_eval_refuses_mismatched_samples(fmnist_ie, make, match):
    ie, x = fmnist_ie
    for f in (ie.fid, ie.kid):
        with pytest.raises(ValueError, match=match): f(make(x))


def test_image_eval_accepts_good_and_slightly_overshooting_samples(fmnist_ie):
    ie, x = fmnist_ie
    s = fmnist_32(x[1280:1280 + 64])
    g = torch.Generator().manual_seed(0)
    over = s * 1.05 + 0.02 * torch.randn(s.shape, generator=g)  # an unclamped sampler's few percent
    assert ie.kid(over) == pytest.approx(ie.kid(over.double()), abs=1e-6)  # float64 samples are cast to the real dtype
    narrow = ImageEval(ie.learn.model, ie.learn.dls, check_range=False, min_samples=2)
    assert math.isfinite(narrow.kid(s / 2))  # check_range=False lets unusual samples through


def test_fid_warns_below_min_samples(fmnist_ie):
    ie, x = fmnist_ie
    with pytest.warns(UserWarning, match=r"64 samples give an FID biased upward.*at least 1280 samples"):
        ie.fid(fmnist_32(x[1280:1344]))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ie.kid(fmnist_32(x[1280:1344]))   # KID is unbiased: no warning


def test_image_eval_small_real_set_warns():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    real = torch.randn(12, 1, 6, 6)
    with pytest.warns(UserWarning, match=r"real statistics come from only 12 images; with 2 features, FID needs at least 20"):
        ImageEval(model, DataLoaders([], [(real, torch.zeros(12))]))
    with pytest.raises(ValueError, match="min_samples"): ImageEval(model, DataLoaders([], [(real, torch.zeros(12))]), min_samples=1)


def test_real_features_follow_the_model():
    "Training the feature model after ImageEval was built must not leave the real statistics of the old weights in use."
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    real, samp = torch.randn(40, 1, 8, 8, generator=g), torch.randn(30, 1, 8, 8, generator=g) + 0.3
    ie = ImageEval(model, DataLoaders([], [(real, torch.zeros(40))]), min_samples=2)
    with torch.no_grad(): model[0].weight.mul_(2.)        # an optimizer step, in effect
    with pytest.warns(UserWarning, match="weights changed"): got = ie.fid(samp)
    with torch.no_grad(): fr, fs = model(real), model(samp)
    assert got == pytest.approx(fid_from_features(fr, fs), rel=1e-5)
    torch.testing.assert_close(ie.feats, fr)


def test_fmnist_32_refuses_wrong_scales():
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(fmnist_32(x.long()), fmnist_32(x))   # any integer type holding 0-255
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\], got values from -1"): fmnist_32(fmnist_32(x)[:, :, 2:-2, 2:-2])
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\], got values from 0 to 255"): fmnist_32(x.float().clamp(0, 255).index_fill(0, torch.tensor([0]), 255.))
    with pytest.raises(ValueError, match="integer images must be 0-255"): fmnist_32(x.long() * 2)
    with pytest.raises(ValueError, match=r"\(N, 28, 28\) or \(N, 1, 28, 28\), got \(4, 1, 32, 32\)"): fmnist_32(fmnist_32(x))
    with pytest.raises(ValueError, match="NaN"): fmnist_32(torch.full((2, 28, 28), float('nan')))
    with pytest.raises(TypeError, match="pixel values"): fmnist_32(x.bool())
