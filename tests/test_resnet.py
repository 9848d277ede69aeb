"""miniai.resnet: ResBlock against a hand-written functional forward (float64), identity path, gradients, models."""
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.resnet import act_gr, ResBlock, get_resnet, get_resnet_gap, GlobalAvgPool
from miniai.init import GeneralRelu


@pytest.mark.parametrize("ni,nf,stride,size,out", [(8, 8, 1, 7, 7), (8, 16, 1, 7, 7), (8, 16, 2, 7, 4), (3, 4, 2, 28, 14)])
def test_resblock_shapes(ni, nf, stride, size, out):
    x = torch.randn(2, ni, size, size)
    assert ResBlock(ni, nf, stride=stride)(x).shape == (2, nf, out, out)


@pytest.mark.parametrize("ni,nf,stride", [(4, 6, 2), (4, 4, 1), (4, 6, 1), (4, 4, 2)])
def test_resblock_matches_functional_reference(ni, nf, stride):
    torch.manual_seed(0)
    rb = ResBlock(ni, nf, stride=stride, ks=3, act=nn.ReLU).double()
    x = torch.randn(3, ni, 9, 9, dtype=torch.float64)
    c1, c2 = rb.convs[0][0], rb.convs[1][0]
    h = F.relu(F.conv2d(x, c1.weight, c1.bias, padding=1))
    h = F.conv2d(h, c2.weight, c2.bias, stride=stride, padding=1)
    sc = F.avg_pool2d(x, 2, ceil_mode=True) if stride == 2 else x
    if ni != nf: sc = F.conv2d(sc, rb.idconv[0].weight, rb.idconv[0].bias)
    torch.testing.assert_close(rb(x), F.relu(h + sc), rtol=1e-12, atol=1e-12)


def test_resblock_with_residual_path_off_is_its_shortcut():
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    # no norm: zero the last conv; with batchnorm: zero its scale and shift (the "zero-init" trick)
    rb = ResBlock(8, 8, act=act_gr).double()
    with torch.no_grad(): rb.convs[1][0].weight.zero_(); rb.convs[1][0].bias.zero_()
    torch.testing.assert_close(rb(x), act_gr()(x))
    rb = ResBlock(8, 8, act=act_gr, norm=nn.BatchNorm2d).double()
    with torch.no_grad(): rb.convs[1][1].weight.zero_(); rb.convs[1][1].bias.zero_()
    torch.testing.assert_close(rb(x), act_gr()(x))
    rb = ResBlock(8, 12, stride=2, act=None).double()
    with torch.no_grad(): rb.convs[1][0].weight.zero_(); rb.convs[1][0].bias.zero_()
    torch.testing.assert_close(rb(x), rb.idconv(F.avg_pool2d(x, 2, ceil_mode=True)))
    assert isinstance(rb.act, nn.Identity)


def test_act_gr_is_course_general_relu():
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(act_gr()(x), F.leaky_relu(x, 0.1) - 0.4)
    assert isinstance(act_gr(), GeneralRelu)


def test_gradients_flow_through_deep_stack():
    "Every parameter of a deep residual stack gets a finite, non-zero gradient, and the input gradient does not vanish."
    torch.manual_seed(0)
    m = nn.Sequential(ResBlock(1, 8, norm=nn.BatchNorm2d), *[ResBlock(8, 8, norm=nn.BatchNorm2d) for _ in range(10)])
    x = torch.randn(2, 1, 6, 6, requires_grad=True)
    m(x).pow(2).mean().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    assert x.grad.abs().mean() > 1e-4


def test_models():
    xb = torch.randn(2, 1, 28, 28)
    m = get_resnet(act_gr, norm=nn.BatchNorm2d)
    assert m(xb).shape == (2, 10)
    assert sum(p.numel() for p in m.parameters()) == 1227900     # the course's ResNet: 1.2M parameters
    assert get_resnet_gap()(xb).shape == (2, 10)
    m = get_resnet_gap(nfs=(8, 16, 32), n_in=3, n_out=5, drop=0.2)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert any(isinstance(o, nn.Dropout) for o in m)
    torch.testing.assert_close(GlobalAvgPool()(torch.ones(2, 3, 4, 4)), torch.ones(2, 3))


def test_bad_input():
    with pytest.raises(ValueError, match="stride must be 1 or 2"): ResBlock(4, 4, stride=3)
    with pytest.raises(ValueError, match="ks must be odd"): ResBlock(4, 4, ks=4)
    with pytest.raises(ValueError, match="ni must be at least 1"): ResBlock(0, 4)
    with pytest.raises(TypeError, match="nf must be an int"): ResBlock(4, 4.0)
    with pytest.raises(ValueError, match="nfs needs at least 2"): get_resnet(nfs=(8,))
