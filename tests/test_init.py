"Tests for miniai.init: norms against torch in float64, Kaiming init, GeneralRelu, LSUV, BatchTransformCB, get_model."
import math
import sys

import pytest
import torch
from torch import nn

from miniai.init import (BatchNorm, BatchTransformCB, GeneralRelu, LayerNorm, clean_ipython_hist, clean_mem, clean_tb,
                         get_model, init_weights, lsuv_init, plot_func)
from miniai.learner import Callback, Learner, TrainCB


@pytest.mark.parametrize('shape,ref_cls', [((8, 3, 5, 5), nn.BatchNorm2d), ((16, 3), nn.BatchNorm1d),
                                           ((4, 3, 7), nn.BatchNorm1d)])
def test_batchnorm_matches_torch_train_and_eval(shape, ref_cls):
    g = torch.Generator().manual_seed(0)
    bn, ref = BatchNorm(3, mom=0.2, eps=1e-4).double(), ref_cls(3, momentum=0.2, eps=1e-4).double()
    with torch.no_grad():   # non-trivial affine parameters
        w, b = torch.rand(3, generator=g, dtype=torch.float64) + 0.5, torch.randn(3, generator=g, dtype=torch.float64)
        bn.mults.copy_(w); bn.adds.copy_(b); ref.weight.copy_(w); ref.bias.copy_(b)
    oa, ob = torch.optim.SGD(bn.parameters(), 0.1), torch.optim.SGD(ref.parameters(), 0.1)
    for step in range(5):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * (step + 1) + step
        ya, yb = bn(x), ref(x)
        torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        loss_a, loss_b = ((ya - t) ** 2).mean(), ((yb - t) ** 2).mean()
        loss_a.backward(); loss_b.backward()
        torch.testing.assert_close(bn.mults.grad, ref.weight.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(bn.adds.grad, ref.bias.grad, rtol=1e-9, atol=1e-9)
        oa.step(); ob.step(); oa.zero_grad(); ob.zero_grad()
        torch.testing.assert_close(bn.means, ref.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.vars, ref.running_var, rtol=1e-12, atol=1e-12)
    bn.eval(); ref.eval()
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-10, atol=1e-10)


def test_batchnorm_input_gradient_matches_torch():
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    BatchNorm(4).double()(x).pow(3).sum().backward()
    nn.BatchNorm2d(4).double()(x2).pow(3).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-9)


def test_batchnorm_bad_input():
    with pytest.raises(ValueError, match=r"BatchNorm\(3\) needs input \(N, 3"):
        BatchNorm(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm(3)(torch.randn(1, 3))


def test_layernorm_matches_torch():
    g = torch.Generator().manual_seed(1)
    ln = LayerNorm(8, eps=1e-5).double()
    with torch.no_grad(): ln.mult.fill_(1.3); ln.add.fill_(0.4)
    x = torch.randn(5, 8, 4, 4, generator=g, dtype=torch.float64) * 3 + 2
    x2 = x.clone().requires_grad_(); x.requires_grad_()
    ref = nn.LayerNorm(x.shape[1:], eps=1e-5).double()
    with torch.no_grad(): ref.weight.fill_(1.3); ref.bias.fill_(0.4)
    ya, yb = ln(x), ref(x2)
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    ya.pow(3).sum().backward(); yb.pow(3).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-9)
    # scalar parameters: their gradient is the sum of nn.LayerNorm's per-element gradients
    torch.testing.assert_close(ln.mult.grad, ref.weight.grad.sum(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ln.add.grad, ref.bias.grad.sum(), rtol=1e-9, atol=1e-9)
    # the same in eval mode (layer norm has no running statistics) and for 2-D input
    ln.eval(); ref2 = nn.LayerNorm(6, elementwise_affine=False).double()
    x = torch.randn(3, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close((ln(x) - 0.4) / 1.3, ref2(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="LayerNorm needs a batch"):
        ln(torch.randn(4))


@pytest.mark.parametrize('leaky', [0., 0.1])
def test_init_weights_kaiming_std(leaky):
    torch.manual_seed(0)
    lin, cv = nn.Linear(400, 300), nn.Conv2d(16, 64, 5)
    for m in (lin, cv): m.apply(partial_init(leaky))
    gain2 = 2 / (1 + leaky ** 2)
    for m, fan_in in ((lin, 400), (cv, 16 * 25)):
        assert m.weight.std().item() == pytest.approx(math.sqrt(gain2 / fan_in), rel=0.03)
        assert abs(m.weight.mean().item()) < 0.01
    bn = nn.BatchNorm2d(3)
    init_weights(bn)   # other modules are left alone
    assert torch.equal(bn.weight, torch.ones(3))


def partial_init(leaky): return lambda m: init_weights(m, leaky=leaky)


@pytest.mark.parametrize('leak,sub,maxv', [(None, None, None), (0.1, 0.4, None), (0.2, None, 2.), (None, 0.5, 1.5)])
def test_general_relu(leak, sub, maxv):
    x = torch.randn(1000, dtype=torch.float64) * 3
    x.requires_grad_()
    y = GeneralRelu(leak, sub, maxv)(x)
    a = 0. if leak is None else leak
    ref = torch.where(x > 0, x, a * x) - (sub or 0.)
    if maxv is not None: ref = torch.minimum(ref, torch.tensor(maxv, dtype=torch.float64))
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-15)
    y.sum().backward()
    dref = torch.where(x > 0, 1., a)
    if maxv is not None: dref = torch.where(ref >= maxv, 0., dref)
    torch.testing.assert_close(x.grad, dref.double())


def test_lsuv_init_unit_stats():
    torch.manual_seed(0)
    model = get_model(lambda: GeneralRelu(leak=0.1, sub=0.4))
    xb = torch.randn(64, 1, 28, 28)
    relus = [m for m in model.modules() if isinstance(m, GeneralRelu)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for r, c in zip(relus, convs): lsuv_init(model, r, c, xb)
    outs = {}
    hooks = [r.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o)) for k, r in enumerate(relus)]
    with torch.no_grad(): model(xb)
    for h in hooks: h.remove()
    for o in outs.values():
        assert abs(o.mean().item()) < 2e-3 and abs(o.std().item() - 1) < 2e-3
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    with pytest.raises(TypeError, match="m_in must have a weight"):
        lsuv_init(model, relus[0], relus[0], xb)


def test_get_model_shapes():
    for norm in (None, BatchNorm, LayerNorm, nn.BatchNorm2d):
        m = get_model(nfs=[1, 4, 8, 8, 16], norm=norm)   # four stride-2 convs take 28x28 down to 2x2, the last to 1x1
        assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert get_model()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sum(isinstance(o, BatchNorm) for o in get_model(norm=BatchNorm).modules()) == 4
    with pytest.raises(ValueError, match="nfs"):
        get_model(nfs=[1])


def test_batch_transform_cb():
    seen = []
    class Spy(Callback):
        order = 1
        def before_batch(self, learn): seen.append((learn.training, learn.batch[0].mean().item()))
    x = torch.zeros(4, 2)
    dls = type('D', (), {'train': [(x, torch.zeros(4, 1))], 'valid': [(x, torch.zeros(4, 1))]})()
    tfm = BatchTransformCB(lambda b: (b[0] + 1, b[1]), on_val=False)
    Learner(nn.Linear(2, 1), dls, cbs=[TrainCB(), tfm, Spy()]).fit(1)
    assert seen == [(True, 1.0), (False, 0.0)]
    with pytest.raises(TypeError, match="tfm must be callable"):
        BatchTransformCB(3)


def test_clean_helpers_and_plot_func():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    try: raise ValueError('x')
    except ValueError: sys.last_type, sys.last_value, sys.last_traceback = sys.exc_info()
    clean_tb()
    assert not hasattr(sys, 'last_traceback') and not hasattr(sys, 'last_value')
    clean_ipython_hist()   # no IPython shell here: a no-op
    clean_mem()
    plt.close('all')   # a figure left by an earlier test would hold other lines
    plot_func(GeneralRelu(0.1, 0.4))
    (line,) = plt.gca().get_lines()[:1]
    assert len(line.get_xdata()) == 100
    plt.close('all')
