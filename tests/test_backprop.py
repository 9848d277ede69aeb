"Tests for miniai.scratch.backprop: hand-written gradients against autograd (float64) and central differences."
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from miniai.scratch.backprop import Lin, Model, Module, Mse, Relu

TOL = dict(rtol=1e-10, atol=1e-12)  # float64; only the order of operations differs from autograd
f64 = torch.float64


def randn(g, *shape): return torch.randn(*shape, generator=g, dtype=f64)


def make(seed, n=32, m=7, nh=11):
    g = torch.Generator().manual_seed(seed)
    x, y = randn(g, n, m), randn(g, n)
    params = [randn(g, m, nh) / m ** .5, randn(g, nh), randn(g, nh, 1) / nh ** .5, randn(g, 1)]
    return x, y, params


def autograd(x, y, w1, b1, w2, b2):
    ts = [t.detach().clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
    xa, w1a, b1a, w2a, b2a = ts
    loss = F.mse_loss((F.relu(xa @ w1a + b1a) @ w2a + b2a)[:, 0], y)
    loss.backward()
    return loss.detach(), [t.grad for t in ts]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_model_grads_match_autograd(seed):
    x, y, params = make(seed)
    model = Model(*params)
    loss = model(x, y)
    model.backward()
    ref_loss, ref_grads = autograd(x, y, *params)
    assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    for name, t, ref in zip(['x', 'w1', 'b1', 'w2', 'b2'], [x, *params], ref_grads):
        assert t.g.shape == t.shape, name
        assert_close(t.g, ref, **TOL, msg=f"gradient of {name}")


def test_model_with_2d_target_and_wider_output():
    "Mse on equal shapes: output (N, k) against target (N, k)."
    g = torch.Generator().manual_seed(3)
    x, y = randn(g, 9, 4), randn(g, 9, 3)
    params = [randn(g, 4, 6), randn(g, 6), randn(g, 6, 3), randn(g, 3)]
    model = Model(*params)
    loss = model(x, y)
    model.backward()
    ts = [t.clone().requires_grad_() for t in (x, *params)]
    ref = F.mse_loss(F.relu(ts[0] @ ts[1] + ts[2]) @ ts[3] + ts[4], y)
    ref.backward()
    assert_close(loss, ref.detach(), rtol=1e-12, atol=0)
    for t, r in zip((x, *params), ts): assert_close(t.g, r.grad, **TOL)


def test_layers_match_autograd_with_upstream_grad():
    g = torch.Generator().manual_seed(4)
    inp, w, b, og = randn(g, 5, 3), randn(g, 3, 4), randn(g, 4), randn(g, 5, 4)
    lin = Lin(w, b)
    out = lin(inp)
    out.g = og
    lin.backward()
    ts = [t.clone().requires_grad_() for t in (inp, w, b)]
    (ts[0] @ ts[1] + ts[2]).backward(og)
    assert_close(out, inp @ w + b, **TOL)
    for t, r in zip((inp, w, b), ts): assert_close(t.g, r.grad, **TOL)

    relu = Relu()
    out = relu(inp)
    out.g = og[:, :3]
    relu.backward()
    ia = inp.clone().requires_grad_()
    F.relu(ia).backward(og[:, :3])
    assert_close(out, F.relu(inp), **TOL)
    assert_close(inp.g, ia.grad, **TOL)
    assert inp.g.dtype == f64


@pytest.mark.parametrize('shapes', [((6, 1), (6,)), ((6,), (6,)), ((6, 1), (6, 1)), ((2, 3, 4), (2, 3, 4))])
def test_mse_matches_autograd(shapes):
    g = torch.Generator().manual_seed(5)
    inp, targ = randn(g, *shapes[0]), randn(g, *shapes[1])
    mse = Mse()
    loss = mse(inp, targ)
    mse.backward()
    ia = inp.clone().requires_grad_()
    ref = F.mse_loss(ia.reshape(targ.shape), targ)
    ref.backward()
    assert_close(loss, ref.detach(), rtol=1e-12, atol=0)
    assert inp.g.shape == inp.shape
    assert_close(inp.g, ia.grad, **TOL)


def numerical_grads(tensors, f, h=1e-6):
    "Central differences (f(p+h) - f(p-h)) / 2h for every element of every tensor."
    out = []
    for t in tensors:
        grad = torch.zeros_like(t)
        flat, gflat = t.view(-1), grad.view(-1)
        for i in range(t.numel()):
            v = flat[i].item()
            flat[i] = v + h; up = f()
            flat[i] = v - h; down = f()
            flat[i] = v
            gflat[i] = (up - down) / (2 * h)
        out.append(grad)
    return out


def test_central_difference_gradients():
    g = torch.Generator().manual_seed(6)
    x, y = randn(g, 4, 3), randn(g, 4)
    params = [randn(g, 3, 5), randn(g, 5), randn(g, 5, 1), randn(g, 1)]
    model = Model(*params)
    model(x, y)
    model.backward()
    # keep away from the ReLU's kink, where the finite difference is not the derivative
    assert (x @ params[0] + params[1]).abs().min() > 1e-3
    num = numerical_grads([x, *params], lambda: Model(*params)(x, y).item())
    for name, t, ng in zip(['x', 'w1', 'b1', 'w2', 'b2'], [x, *params], num):
        assert_close(t.g, ng, rtol=1e-6, atol=1e-8, msg=f"gradient of {name}")


def test_module_stores_args_and_out():
    class Square(Module):
        def forward(self, a): return a * a
        def bwd(self, out, a): a.g = 2 * a * out.g

    a = torch.tensor([1., -2., 3.], dtype=f64)
    sq = Square()
    out = sq(a)
    assert sq.args == (a,) and sq.out is out
    out.g = torch.ones_like(out)
    sq.backward()
    assert_close(a.g, 2 * a)


def test_errors():
    x, y, (w1, b1, w2, b2) = make(7, n=5, m=3, nh=4)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\) to match w of shape \(3, 4\), got \(1,\)"):
        Lin(w1, b2)
    with pytest.raises(ValueError, match=r"w must be a 2-D tensor"):
        Lin(b1, b1)
    with pytest.raises(ValueError, match=r"w1 \(3, 4\) and w2 \(1, 4\) do not chain"):
        Model(w1, b1, w2.t(), b2)
    with pytest.raises(ValueError, match=r"Lin expects input of shape \(N, 3\) for w of shape \(3, 4\), got \(5, 4\)"):
        Lin(w1, b1)(torch.zeros(5, 4, dtype=f64))
    with pytest.raises(ValueError, match=r"Lin expects input of shape \(N, 3\)"):
        Model(w1, b1, w2, b2)(x.t(), y)
    with pytest.raises(ValueError, match=r"got output \(5, 1\) and target \(4,\)"):
        Model(w1, b1, w2, b2)(x, y[:4])
    with pytest.raises(ValueError, match=r"got output \(5, 2\) and target \(5,\)"):
        Mse()(torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match=r"got output \(5,\) and target \(5, 1\)"):
        Mse()(torch.zeros(5), torch.zeros(5, 1))
    with pytest.raises(RuntimeError, match="call the Relu before its backward"):
        Relu().backward()
    with pytest.raises(NotImplementedError, match="Module must define forward"):
        Module()(x)
