"Tests for miniai.superres: the pairs, PSNR/SSIM against scikit-image, the U-Net's zero-init identity, the pretrained encoder, the feature loss."
import pytest
import torch
import torch.nn.functional as F

from miniai.fid import fmnist_classifier_model
from miniai.superres import (sr_input, SuperResCB, image_psnr, ssim, PSNR, SSIM, SRUNet, sr_autoencoder, load_encoder, freeze_encoder,
                             FeatureLoss, random_patches)


def imgs(n=4, c=1, s=32, seed=0):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_sr_input():
    x = imgs()
    y = sr_input(x)
    assert y.shape == x.shape
    # the low-resolution content is the 2x2 block means: bicubic interpolation of a constant image is that constant
    lo = F.avg_pool2d(x, 2)
    torch.testing.assert_close(sr_input(lo.repeat_interleave(2, -1).repeat_interleave(2, -2)), sr_input(x))
    torch.testing.assert_close(sr_input(torch.full((1, 1, 8, 8), 0.3)), torch.full((1, 1, 8, 8), 0.3))
    with pytest.raises(ValueError, match='divisible'): sr_input(torch.rand(1, 1, 9, 9))
    with pytest.raises(ValueError, match='factor'): sr_input(x, 1)
    learn = type('L', (), {})(); learn.batch = (x, torch.zeros(4))
    SuperResCB().before_batch(learn)
    assert torch.equal(learn.batch[1], x) and torch.equal(learn.batch[0], y)


def test_psnr_ssim_match_skimage():
    from skimage.metrics import structural_similarity, peak_signal_noise_ratio
    a = imgs(3, 2, 24, seed=1).double()
    b = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).clamp(-1, 1)
    ref_ssim = [structural_similarity(a[i].numpy(), b[i].numpy(), data_range=2., gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, channel_axis=0) for i in range(3)]
    ref_psnr = [peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=2.) for i in range(3)]
    torch.testing.assert_close(ssim(b, a), torch.tensor(ref_ssim, dtype=torch.float64))
    torch.testing.assert_close(image_psnr(b, a), torch.tensor(ref_psnr, dtype=torch.float64))
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
    m = PSNR().update(b[:2].float(), a[:2].float()).update(b[2:].float(), a[2:].float())
    assert abs(float(m.compute()) - sum(ref_psnr) / 3) < 1e-4
    assert abs(float(SSIM().update(b.float(), a.float()).compute()) - sum(ref_ssim) / 3) < 1e-4
    with pytest.raises(ValueError, match='window'): ssim(a[..., :8, :8], a[..., :8, :8])
    with pytest.raises(ValueError, match='shape'): image_psnr(a, a[:1])


@pytest.mark.parametrize('cross', [False, True])
def test_unet_starts_as_identity(cross):
    torch.manual_seed(0)
    m = SRUNet(nfs=(4, 8, 16), cross_convs=cross)
    x = imgs(2, 1, 16)
    assert torch.equal(m(x), x)
    with torch.no_grad(): m.conv_out.weight.normal_()
    assert not torch.equal(m(x), x)   # the correction is live once the output conv learns
    c = SRUNet(nfs=(4, 8), n_in=3, n_out=3)
    assert c(imgs(2, 3, 8)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match='divisible'): m(imgs(1, 1, 18))
    with pytest.raises(ValueError, match='n_in'): SRUNet(n_in=1, n_out=3)
    with pytest.raises(ValueError, match='skips'): SRUNet(skips=False, cross_convs=True)


def test_autoencoder_has_no_skips():
    "With the bottleneck's output replaced by zeros, the autoencoder's output no longer depends on its input; the U-Net's still does."
    torch.manual_seed(0)
    x1, x2 = imgs(2, 1, 16, seed=1), imgs(2, 1, 16, seed=2)
    for m, depends in ((sr_autoencoder(nfs=(4, 8, 16)).eval(), False), (SRUNet(nfs=(4, 8, 16)).eval(), True)):
        with torch.no_grad(): m.conv_out.weight.normal_()
        h = m.encoder[-1].register_forward_hook(lambda mod, i, o: torch.zeros_like(o))
        assert (not torch.allclose(m(x1), m(x2))) == depends
        h.remove()
        assert m(x1).shape == x1.shape


def test_load_and_freeze_encoder():
    torch.manual_seed(1)
    clf = fmnist_classifier_model()
    m = SRUNet(nfs=(8, 16, 32, 64))
    load_encoder(m, clf)
    for i, blk in enumerate(m.encoder):
        for (k, a), (_, b) in zip(blk.state_dict().items(), clf[i].state_dict().items()): assert torch.equal(a, b), (i, k)
    freeze_encoder(m)
    assert not any(p.requires_grad for p in m.encoder.parameters())
    freeze_encoder(m, False)
    assert all(p.requires_grad for p in m.encoder.parameters())
    with pytest.raises(ValueError, match='block 0'): load_encoder(SRUNet(nfs=(16, 32)), clf)


def test_feature_loss_against_hand_computation():
    torch.manual_seed(2)
    clf = fmnist_classifier_model().eval()
    fl = FeatureLoss(clf, [1, 3], weights=[0.5, 2.], pixel_weight=0.7)
    a, b = imgs(3, 1, 32, seed=3), imgs(3, 1, 32, seed=4)
    with torch.no_grad():
        fa1, fb1 = clf[:2](a), clf[:2](b)
        fa3, fb3 = clf[:4](a), clf[:4](b)
    want = 0.7 * F.mse_loss(a, b) + 0.5 * F.mse_loss(fa1, fb1) + 2. * F.mse_loss(fa3, fb3)
    torch.testing.assert_close(fl(a, b), want)
    assert float(fl(b, b)) == 0.
    p = a.clone().requires_grad_()
    fl(p, b).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(q.grad is None for q in clf.parameters())
    with pytest.raises(ValueError, match='out of range'): FeatureLoss(clf, [99])
    with pytest.raises(ValueError, match='weights'): FeatureLoss(clf, [1, 2], weights=[1.])


def test_random_patches():
    ims = [torch.arange(3 * 10 * 12.).reshape(3, 10, 12), torch.zeros(3, 8, 8)]
    p = random_patches(ims, 4, 20, generator=torch.Generator().manual_seed(0))
    assert p.shape == (20, 3, 4, 4)
    for q in p:   # every patch is a crop of one of the images
        if q.abs().sum() == 0: continue
        top, left = divmod(int(q[0, 0, 0]), 12)
        torch.testing.assert_close(q, ims[0][:, top:top + 4, left:left + 4])
    with pytest.raises(ValueError, match='H, W >= 9'): random_patches(ims, 9, 2)
