"""Tests for miniai.conv: im2col/conv2d against torch, the `conv` block helper, devices."""
import itertools
from collections import namedtuple
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.conv import collate_device, conv, conv2d, def_device, im2col, to_device

# float64 throughout: our im2col + matmul and torch's conv sum the same products in a different order,
# so they agree to ~1e-15 relative; we use torch.testing's float64 defaults (rtol 1e-7, atol 1e-7).
D = torch.float64


def _gen(seed): return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("ks,stride,padding", list(itertools.product([1, 3, 5], [1, 2, 3], [0, 1, 2])))
def test_conv2d_matches_torch(ks, stride, padding):
    g = _gen(ks * 100 + stride * 10 + padding)
    x = torch.randn(2, 3, 11, 8, generator=g, dtype=D)   # non-square input
    w = torch.randn(4, 3, ks, ks, generator=g, dtype=D)
    b = torch.randn(4, generator=g, dtype=D)
    torch.testing.assert_close(conv2d(x, w, b, stride, padding), F.conv2d(x, w, b, stride=stride, padding=padding))
    torch.testing.assert_close(conv2d(x, w, None, stride, padding), F.conv2d(x, w, None, stride=stride, padding=padding))


def test_conv2d_single_channel_and_nonsquare_kernel():
    g = _gen(1)
    x, w = torch.randn(1, 1, 9, 13, generator=g, dtype=D), torch.randn(2, 1, 2, 4, generator=g, dtype=D)
    torch.testing.assert_close(conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))


def test_conv2d_gradients_match_torch():
    g = _gen(2)
    x = torch.randn(2, 2, 7, 6, generator=g, dtype=D, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=D, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=D, requires_grad=True)
    gx, gw, gb = torch.autograd.grad(conv2d(x, w, b, 2, 1).square().sum(), (x, w, b))
    rx, rw, rb = torch.autograd.grad(F.conv2d(x, w, b, stride=2, padding=1).square().sum(), (x, w, b))
    for a, r in ((gx, rx), (gw, rw), (gb, rb)): torch.testing.assert_close(a, r)


@pytest.mark.parametrize("ks,stride,padding", [(1, 1, 0), (3, 1, 1), (3, 2, 0), (5, 3, 2), (2, 2, 1), ((2, 3), 1, 0)])
def test_im2col_matches_unfold(ks, stride, padding):
    x = torch.randn(3, 2, 10, 7, generator=_gen(3), dtype=D)
    torch.testing.assert_close(im2col(x, ks, stride, padding), F.unfold(x, ks, stride=stride, padding=padding), rtol=0, atol=0)


def test_bad_inputs():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="channel mismatch"): conv2d(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="4-D"): conv2d(x[0], w)
    with pytest.raises(ValueError, match="4-D"): im2col(torch.randn(8, 8), 3)
    with pytest.raises(ValueError, match="weight must be a 4-D"): conv2d(x, w[0])
    with pytest.raises(ValueError, match="larger than the padded input"): conv2d(x, torch.randn(4, 3, 9, 9))
    with pytest.raises(ValueError, match="larger than the padded input"): im2col(x, 11, padding=1)
    with pytest.raises(ValueError, match="stride must be positive"): conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="stride must be positive"): im2col(x, 3, stride=-1)
    with pytest.raises(ValueError, match="padding must be non-negative"): conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="bias must have shape"): conv2d(x, w, torch.randn(3))
    with pytest.raises(TypeError, match="stride must be an int"): conv2d(x, w, stride=1.5)
    with pytest.raises(TypeError, match="input must be a tensor"): conv2d(x.numpy(), w)
    # padding makes a kernel that is larger than the raw input fit
    assert conv2d(x, torch.randn(4, 3, 9, 9), padding=1).shape == (2, 4, 2, 2)


def test_conv_layers():
    c = conv(3, 8)
    assert [type(o) for o in c] == [nn.Conv2d, nn.ReLU]
    cv = c[0]
    assert (cv.in_channels, cv.out_channels, cv.kernel_size, cv.stride, cv.padding) == (3, 8, (3, 3), (2, 2), (1, 1))
    assert cv.bias is not None
    c = conv(3, 8, ks=5, stride=1, act=None, norm=nn.BatchNorm2d)
    assert [type(o) for o in c] == [nn.Conv2d, nn.BatchNorm2d]
    assert c[0].bias is None and c[0].padding == (2, 2) and c[1].num_features == 8
    assert conv(3, 8, norm=nn.BatchNorm2d, bias=True)[0].bias is not None
    assert conv(3, 8, bias=False)[0].bias is None
    assert [type(o) for o in conv(3, 8, ks=1, stride=1, act=None, norm=nn.BatchNorm2d)] == [nn.Conv2d, nn.BatchNorm2d]
    assert conv(3, 8, ks=1)[0].padding == (0, 0)


def test_conv_act_variants():
    assert [type(o) for o in conv(3, 8, act=False)] == [nn.Conv2d]
    assert [type(o) for o in conv(3, 8, act=None)] == [nn.Conv2d]
    assert [type(o) for o in conv(3, 8, act=True)] == [nn.Conv2d, nn.ReLU]
    assert [type(o) for o in conv(3, 8, act=nn.SiLU)] == [nn.Conv2d, nn.SiLU]
    leaky = conv(3, 8, act=partial(nn.LeakyReLU, 0.3))[1]
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.3
    with pytest.raises(TypeError, match="act must be"): conv(3, 8, act='relu')


@pytest.mark.parametrize("stride,size,expected", [(1, 28, 28), (2, 28, 14), (2, 7, 4), (1, 5, 5)])
@pytest.mark.parametrize("ks", [1, 3, 5])
def test_conv_output_shapes(stride, size, expected, ks):
    out = conv(2, 6, ks=ks, stride=stride, norm=nn.BatchNorm2d)(torch.randn(3, 2, size, size))
    assert out.shape == (3, 6, expected, expected)


def test_conv_matches_its_parts():
    torch.manual_seed(0)
    c = conv(2, 4, ks=3, stride=2).double()
    x = torch.randn(2, 2, 9, 9, dtype=D)
    ref = F.relu(F.conv2d(x, c[0].weight, c[0].bias, stride=2, padding=1))
    torch.testing.assert_close(c(x), ref)
    torch.testing.assert_close(F.relu(conv2d(x, c[0].weight, c[0].bias, 2, 1)), ref)


def test_def_device():
    expected = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    assert def_device == expected


def test_to_device_nested():
    P = namedtuple('P', 'a b')
    t = torch.randn(3)
    x = {'a': (t, [t, 'txt', 5]), 'b': P(t, None), 'c': 1.5}
    out = to_device(x, 'meta')   # the meta device exists everywhere, so the move is observable on a CPU-only machine
    assert out['a'][0].device.type == 'meta' and out['a'][1][0].device.type == 'meta'
    assert isinstance(out['a'], tuple) and isinstance(out['a'][1], list) and out['a'][1][1:] == ['txt', 5]
    assert isinstance(out['b'], P) and out['b'].a.device.type == 'meta' and out['b'].b is None
    assert out['c'] == 1.5
    assert x['a'][0].device.type == 'cpu'   # input left unchanged
    assert to_device('str', 'meta') == 'str' and to_device(3, 'meta') == 3


def test_collate_device():
    b = [(torch.full((2,), float(i)), i) for i in range(3)]
    xb, yb = collate_device(b, 'meta')
    assert xb.shape == (3, 2) and xb.device.type == 'meta' and yb.device.type == 'meta' and yb.shape == (3,)
    xb, yb = collate_device(b)
    assert xb.device.type == torch.device(def_device).type
    torch.testing.assert_close(yb.cpu(), torch.arange(3))
