"Tests for miniai.recipe: the pre-activation blocks, and TrivialAugment's operations against torchvision and closed forms."
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from miniai.recipe import PreActBlock, preact_resnet, trivial_augment, TA_OPS, TrivialAugmentCB


def test_preact_block_identity_path():
    torch.manual_seed(0)
    b = PreActBlock(8, 8).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad(): b.conv2.weight.zero_()
    torch.testing.assert_close(b(x), x)   # the residual branch off: the input passes unchanged (no activation after the sum)
    d = PreActBlock(8, 16, stride=2).eval()
    with torch.no_grad(): d.conv2.weight.zero_()
    torch.testing.assert_close(d(x), d.shortcut(x))
    assert d(x).shape == (2, 16, 3, 3)
    assert isinstance(b.bn1, torch.nn.BatchNorm2d) and b.conv1.in_channels == 8   # norm and activation come first
    with pytest.raises(ValueError, match='stride'): PreActBlock(8, 8, stride=3)


def test_preact_resnet():
    m = preact_resnet(nfs=(8, 16, 32), depths=(1, 2, 1), n_out=7, drop=0.5)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 7)
    assert sum(isinstance(o, PreActBlock) for o in m) == 4
    with pytest.raises(ValueError, match='same'): preact_resnet(nfs=(8, 16), depths=(1,))


def draws(n, n_ops, seed):
    "The (op index, level, sign) that trivial_augment draws from a generator seeded with `seed`."
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, n_ops, (n,), generator=g)
    level = torch.randint(0, 31, (n,), generator=g).float() / 30
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1., 1.)
    return which, level, sign


def imgs(n=6, c=3, s=12, seed=0): return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('op,ref', [('brightness', TF.adjust_brightness), ('contrast', TF.adjust_contrast),
                                    ('sharpness', TF.adjust_sharpness), ('color', TF.adjust_saturation)])
def test_enhance_ops_match_torchvision(op, ref):
    x = imgs()
    out = trivial_augment(x, ops=(op,), generator=torch.Generator().manual_seed(1))
    _, level, sign = draws(len(x), 1, 1)
    for i in range(len(x)):
        f = float(1 + level[i] * sign[i] * 0.99)
        torch.testing.assert_close(out[i], ref(x[i], f), atol=1e-4, rtol=0)


def test_pixel_ops_match_torchvision():
    u8 = (imgs(8) * 255).round().to(torch.uint8)
    x = u8.float() / 255
    _, level, _ = draws(8, 1, 2)
    out = trivial_augment(x, ops=('posterize',), generator=torch.Generator().manual_seed(2))
    for i in range(8):
        bits = int(8 - round(float(level[i]) * 6))
        torch.testing.assert_close(out[i], TF.posterize(u8[i], bits).float() / 255)
    out = trivial_augment(x, ops=('solarize',), generator=torch.Generator().manual_seed(2))
    for i in range(8): torch.testing.assert_close(out[i], TF.solarize(x[i], 1 - float(level[i])))
    torch.testing.assert_close(trivial_augment(x, ops=('autocontrast',)), TF.autocontrast(x))
    torch.testing.assert_close(trivial_augment(x, ops=('equalize',)), TF.equalize(u8).float() / 255)


@pytest.mark.parametrize('op,dim', [('translate_x', -1), ('translate_y', -2)])
def test_translation_by_whole_pixels_is_a_shift(op, dim):
    x = imgs(6, 1, 32, seed=3).double()
    out = trivial_augment(x, strength=30 / 32, ops=(op,), generator=torch.Generator().manual_seed(4))   # shifts of k pixels
    _, level, sign = draws(6, 1, 4)
    for i in range(6):
        k = int(round(float(level[i] * sign[i]) * 30))
        want = torch.roll(x[i], -k, dims=dim)
        idx = torch.arange(32)
        gone = (idx >= 32 - k) if k > 0 else (idx < -k)   # pixels shifted in from outside are zero
        if dim == -1: want[..., gone] = 0
        else: want[..., gone, :] = 0
        torch.testing.assert_close(out[i], want, atol=1e-6, rtol=0)


def test_augment_basics():
    x = imgs()
    assert torch.equal(trivial_augment(x, ops=('identity',)), x)
    a = trivial_augment(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, trivial_augment(x, generator=torch.Generator().manual_seed(5)))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.allclose(trivial_augment(x, strength=0., ops=('rotate', 'shear_x')), x, atol=1e-6)   # magnitude 0: unchanged
    with pytest.raises(ValueError, match='unknown ops'): trivial_augment(x, ops=('flip',))
    with pytest.raises(ValueError, match='N, C, H, W'): trivial_augment(x[0])
    assert set(TA_OPS) >= {'identity', 'rotate', 'equalize'}


def test_callback_only_on_training_batches():
    x, y = imgs(), torch.zeros(6)
    cb = TrivialAugmentCB(generator=torch.Generator().manual_seed(0), post=lambda t: t * 2)
    learn = type('L', (), {})()
    learn.training, learn.batch = False, (x, y)
    cb.before_batch(learn)
    assert learn.batch[0] is x
    learn.training = True
    cb.before_batch(learn)
    torch.testing.assert_close(learn.batch[0], trivial_augment(x, generator=torch.Generator().manual_seed(0)) * 2)
