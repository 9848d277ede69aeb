"Tests for miniai.scratch.matmul: every from-scratch matmul against torch's `@` (float64, rtol/atol 1e-12)."
import os
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from miniai.scratch import matmul as mm
from miniai.scratch.matmul import matmul_broadcast, matmul_cuda, matmul_einsum, matmul_loops, matmul_numba

TOL = dict(rtol=1e-12, atol=1e-12)  # float64: only summation order differs from `@`
SHAPES = [(1, 1, 1), (3, 4, 5), (7, 2, 3), (2, 9, 1), (4, 4, 4), (1, 6, 8)]  # (ar, ac, bc), mostly non-square
FAST = [matmul_broadcast, matmul_einsum]


def rand_pair(ar, ac, bc, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(ar, ac, generator=g, dtype=dtype), torch.randn(ac, bc, generator=g, dtype=dtype)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('f', [matmul_loops, matmul_broadcast, matmul_einsum], ids=lambda f: f.__name__)
def test_matches_torch(f, shape):
    a, b = rand_pair(*shape, seed=sum(shape))
    c = f(a, b)
    assert c.shape == (shape[0], shape[2]) and c.dtype == torch.float64
    assert_close(c, a @ b, **TOL)


@pytest.mark.parametrize('f', FAST, ids=lambda f: f.__name__)
def test_larger_and_float32(f):
    a, b = rand_pair(33, 70, 17, seed=1)
    assert_close(f(a, b), a @ b, **TOL)
    a32, b32 = a.float(), b.float()
    c = f(a32, b32)
    assert c.dtype == torch.float32
    assert_close(c, a32 @ b32, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('f', FAST + [matmul_loops], ids=lambda f: f.__name__)
def test_non_contiguous_and_empty(f):
    a, b = rand_pair(5, 6, 4, seed=2)
    assert_close(f(a.t().contiguous().t(), b.t().contiguous().t()), a @ b, **TOL)  # column-major inputs
    assert_close(f(b.t(), a.t()), b.t() @ a.t(), **TOL)  # transposed views
    assert_close(f(a[:0], b), a[:0] @ b, **TOL)  # zero rows
    assert_close(f(a[:, :0], b[:0]), torch.zeros(5, 4, dtype=torch.float64), **TOL)  # empty inner dimension


ALL = [matmul_loops, matmul_broadcast, matmul_einsum, matmul_numba, matmul_cuda]


@pytest.mark.parametrize('f', ALL, ids=lambda f: f.__name__)
def test_bad_shapes_raise(f):
    a, b = rand_pair(3, 4, 5, seed=3)
    with pytest.raises(ValueError, match=r"inner dimensions differ: a has shape \(3, 4\) and b has shape \(3, 4\)"):
        f(a, a)
    with pytest.raises(ValueError, match=r"b must be 2-D, got shape \(4,\)"):
        f(a, b[:, 0])
    with pytest.raises(ValueError, match=r"a must be 2-D, got shape \(2, 3, 4\)"):
        f(a.expand(2, 3, 4), b)
    with pytest.raises(TypeError, match="a must be a torch.Tensor, got list"):
        f(a.tolist(), b)
    with pytest.raises(TypeError, match="same dtype"):
        f(a, b.float())


def test_numba_matches_torch():
    pytest.importorskip('numba')
    for i, shape in enumerate(SHAPES + [(20, 31, 9)]):
        a, b = rand_pair(*shape, seed=10 + i)
        assert_close(matmul_numba(a, b), a @ b, **TOL)
    a, b = rand_pair(6, 5, 7, seed=4)
    assert_close(matmul_numba(b.t(), a.t()), b.t() @ a.t(), **TOL)  # strided views
    assert_close(matmul_numba(a[:0], b), a[:0] @ b, **TOL)
    c = matmul_numba(a.float(), b.float())
    assert c.dtype == torch.float32
    assert_close(c, a.float() @ b.float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="matmul_numba supports float32 and float64 tensors, got torch.int64"):
        matmul_numba(a.long(), b.long())


def test_numba_missing_gives_clear_import_error(monkeypatch):
    mm._numba_matmul.cache_clear()
    monkeypatch.setitem(sys.modules, 'numba', None)  # makes `import numba` fail
    try:
        with pytest.raises(ImportError, match="matmul_numba needs numba"):
            matmul_numba(*rand_pair(2, 3, 4, seed=5))
    finally:
        mm._numba_matmul.cache_clear()


def _has_cuda():
    try:
        from numba import cuda
    except ImportError:
        return False
    return torch.cuda.is_available() and cuda.is_available()


@pytest.mark.skipif(not _has_cuda(), reason='needs a CUDA GPU and numba')
def test_cuda_matches_torch():
    for i, shape in enumerate(SHAPES + [(40, 33, 17)]):
        a, b = rand_pair(*shape, seed=20 + i)
        assert_close(matmul_cuda(a, b), a @ b, **TOL)  # CPU tensors: copied to the GPU and back
        ac, bc = a.cuda(), b.cuda()
        c = matmul_cuda(ac, bc)
        assert c.is_cuda
        assert_close(c, ac @ bc, **TOL)


@pytest.mark.skipif(_has_cuda(), reason='checks the error raised without a GPU')
def test_cuda_without_gpu_raises():
    pytest.importorskip('numba')
    with pytest.raises(RuntimeError, match="matmul_cuda needs a CUDA GPU"):
        matmul_cuda(*rand_pair(2, 3, 4, seed=6))


_SIM_SCRIPT = """
import torch
from miniai.scratch.matmul import matmul_cuda
g = torch.Generator().manual_seed(7)
for ar, ac, bc in [(3, 4, 5), (5, 2, 6), (1, 3, 1)]:
    a = torch.randn(ar, ac, generator=g, dtype=torch.float64)
    b = torch.randn(ac, bc, generator=g, dtype=torch.float64)
    torch.testing.assert_close(matmul_cuda(a, b, tpb=4), a @ b, rtol=1e-12, atol=1e-12)
print('ok')
"""


def test_cuda_kernel_in_simulator():
    "The CUDA kernel's indexing, run by numba's CUDA simulator on the CPU (no GPU needed)."
    pytest.importorskip('numba')
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM='1')
    r = subprocess.run([sys.executable, '-c', _SIM_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]
