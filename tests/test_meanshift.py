"Tests for miniai.scratch.meanshift: recovery of known cluster centres, batching, dtypes, errors."
import math

import pytest
import torch
from torch.testing import assert_close

from miniai.scratch.meanshift import gaussian, meanshift


def clusters(seed, n_clusters=5, n_samples=60, std=1.5, dtype=torch.float64):
    "Well separated centres (>= 15 apart) and points around them (noise clipped at 3 std), from a seeded generator."
    g = torch.Generator().manual_seed(seed)
    while True:
        centres = torch.rand(n_clusters, 2, generator=g, dtype=dtype) * 70 - 35
        if torch.pdist(centres).min() > 15: break
    noise = torch.randn(n_clusters, n_samples, 2, generator=g, dtype=dtype).clamp(-3, 3) * std
    return centres, (centres[:, None] + noise).reshape(-1, 2), torch.arange(n_clusters).repeat_interleave(n_samples)


def test_gaussian_matches_torch_normal():
    g = torch.Generator().manual_seed(0)
    d, bw = torch.rand(50, generator=g, dtype=torch.float64) * 10, 2.5
    ref = torch.distributions.Normal(torch.tensor(0., dtype=torch.float64), bw).log_prob(d).exp()
    assert_close(gaussian(d, bw), ref, rtol=1e-12, atol=0)


def meanshift_ref(X, bw, n_iter):
    "Unbatched reference built from torch.cdist and a Normal density."
    for _ in range(n_iter):
        w = torch.distributions.Normal(torch.zeros((), dtype=X.dtype), bw).log_prob(torch.cdist(X, X)).exp()
        X = w @ X / w.sum(1, keepdim=True)
    return X


def test_matches_reference():
    _, X, _ = clusters(1, n_clusters=3, n_samples=20)
    X = X + torch.randn(X.shape, generator=torch.Generator().manual_seed(9), dtype=X.dtype)  # blur the clusters
    assert_close(meanshift(X, bw=3., n_iter=3, bs=7), meanshift_ref(X, 3., 3), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_recovers_known_centres(seed, dtype):
    centres, X, labels = clusters(seed, dtype=dtype)
    out = meanshift(X, bs=128)
    assert out.dtype == dtype and out.shape == X.shape
    assert (out - centres[labels]).norm(dim=1).max() < 1.0  # each point ends near its own true centre
    for k in range(len(centres)):  # and the points of one cluster coincide
        pts = out[labels == k]
        assert (pts - pts.mean(0)).abs().max() < 1e-3
    assert not torch.equal(out, X)


def test_batched_equals_unbatched():
    _, X, _ = clusters(3)
    full = meanshift(X, n_iter=3, bs=len(X))
    for bs in (1 + len(X) // 3, 17, len(X) + 5):
        assert_close(meanshift(X, n_iter=3, bs=bs), full, rtol=1e-12, atol=1e-12)


def test_float32_agrees_with_float64():
    _, X, _ = clusters(4)
    assert_close(meanshift(X.float()), meanshift(X).float(), rtol=1e-4, atol=1e-3)


def test_does_not_modify_input_and_zero_iterations():
    _, X, _ = clusters(5, n_clusters=2, n_samples=10)
    X0 = X.clone()
    meanshift(X)
    assert torch.equal(X, X0)
    out = meanshift(X, n_iter=0)
    assert torch.equal(out, X) and out.data_ptr() != X.data_ptr()


def test_higher_dimensions():
    g = torch.Generator().manual_seed(6)
    centres = torch.tensor([[0., 0., 0.], [20., 0., 0.], [0., 20., 20.]], dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(30)
    X = centres[labels] + torch.randn(90, 3, generator=g, dtype=torch.float64).clamp(-3, 3)
    out = meanshift(X, n_iter=8)
    assert (out - centres[labels]).norm(dim=1).max() < 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_matches_cpu():
    _, X, _ = clusters(7)
    out = meanshift(X.to('cuda'))
    assert out.is_cuda
    assert_close(out.cpu(), meanshift(X), rtol=1e-9, atol=1e-9)


def test_bad_inputs():
    _, X, _ = clusters(8, n_clusters=2, n_samples=5)
    with pytest.raises(ValueError, match=r"X must be 2-D \(n_points, n_dims\), got shape \(10,\)"):
        meanshift(X[:, 0])
    with pytest.raises(TypeError, match="X must be a floating point tensor, got torch.int64"):
        meanshift(X.long())
    with pytest.raises(TypeError, match="X must be a torch.Tensor, got list"):
        meanshift(X.tolist())
    for kw, msg in [(dict(bw=0), "bw must be a positive number, got 0"), (dict(bw=-1.), "bw must be a positive"),
                    (dict(bw=math.nan), "bw must be a positive"), (dict(n_iter=-1), "n_iter must be an integer >= 0"),
                    (dict(n_iter=2.5), "n_iter must be an integer"), (dict(bs=0), "bs must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=msg):
            meanshift(X, **kw)
