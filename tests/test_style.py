"Tests for miniai.style: the Gram matrix by hand, the content and style losses, optimising pixels with the Learner, the feature networks."
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.learner import Learner
from miniai.style import (gram_matrix, ContentLoss, StyleLoss, ImageModel, dummy_dls, ImageOptCB, ImageLogCB, ImageNetNorm,
                          vgg16_features, style_feature_net, load_style_features, STYLE_FEATURES, STYLE_LAYERS)


def test_gram_matrix_by_hand():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    G = gram_matrix(x)
    want = torch.empty(2, 3, 3, dtype=torch.float64)
    for b in range(2):
        for c in range(3):
            for d in range(3): want[b, c, d] = sum(x[b, c, i, j] * x[b, d, i, j] for i in range(4) for j in range(5)) / 20
    torch.testing.assert_close(G, want)
    torch.testing.assert_close(G, G.transpose(1, 2))
    with pytest.raises(ValueError, match='B, C, H, W'): gram_matrix(torch.randn(3, 4, 5))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU())


def test_content_and_style_losses_by_hand():
    net = small_net().double()
    tgt, x = torch.rand(1, 3, 8, 8, dtype=torch.float64), torch.rand(2, 3, 8, 8, dtype=torch.float64)
    cl = ContentLoss(tgt, net, [1, 3], weights=[1., 0.5])
    sl = StyleLoss(tgt, net, [1, 3], weights=[2., 3.])
    f1, f3 = (lambda a: net[:2](a)), (lambda a: net(a))
    with torch.no_grad():
        want_c = F.mse_loss(f1(x), f1(tgt).expand(2, -1, -1, -1)) + 0.5 * F.mse_loss(f3(x), f3(tgt).expand(2, -1, -1, -1))
        want_s = (2 * F.mse_loss(gram_matrix(f1(x)), gram_matrix(f1(tgt)).expand(2, -1, -1))
                  + 3 * F.mse_loss(gram_matrix(f3(x)), gram_matrix(f3(tgt)).expand(2, -1, -1)))
    torch.testing.assert_close(cl(x).double(), want_c, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sl(x).double(), want_s, rtol=1e-5, atol=1e-7)
    assert float(cl(tgt)) == 0 and float(sl(tgt)) == 0
    # style ignores where things are: a flipped target has (almost) the same Gram matrices through a symmetric net
    with pytest.raises(ValueError, match='weights'): StyleLoss(tgt, net, [1, 3], weights=[1.])


def test_pixel_optimisation_with_the_learner():
    target = torch.rand(1, 3, 8, 8) * 2 - 1
    model = ImageModel(torch.zeros(3, 8, 8))
    log = ImageLogCB(every=5)
    learn = Learner(model, dummy_dls(20), lambda im: F.mse_loss(im, target), lr=0.1, opt_func=torch.optim.Adam, cbs=[ImageOptCB(), log])
    learn.fit(1)
    assert F.mse_loss(model.im.detach(), target) < 0.5 * F.mse_loss(torch.zeros_like(target), target)
    assert log.steps == [5, 10, 15, 20] and log.images[-1].shape == (3, 8, 8)
    torch.testing.assert_close(log.images[-1], model.im.detach()[0])
    assert model(123, 'ignored') is model.im
    with pytest.raises(ValueError, match='n_steps'): dummy_dls(0)
    with pytest.raises(ValueError, match='image'): ImageModel(torch.zeros(8, 8))


def test_vgg16_features_from_a_local_file(tmp_path, monkeypatch):
    import torchvision
    from torchvision.models.vgg import VGG, make_layers
    small = lambda: VGG(make_layers([8, 'M', 16, 'M']), num_classes=10)   # a stand-in: the real VGG16 file is 528 MB
    monkeypatch.setattr(torchvision.models, 'vgg16', small)
    torch.manual_seed(0)
    ref = small()
    torch.save(ref.state_dict(), tmp_path / 'vgg.pth')
    m = vgg16_features(tmp_path / 'vgg.pth')
    assert isinstance(m[0], ImageNetNorm) and not any(p.requires_grad for p in m.parameters()) and not m.training
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(m(x), ref.features(((x + 1) / 2 - mean) / std))
    with pytest.raises(FileNotFoundError, match='VGG16'): vgg16_features(tmp_path / 'missing.pth')


def test_shipped_style_features(tmp_path):
    if not STYLE_FEATURES.is_file(): pytest.skip('the style feature network is not shipped in this checkout')
    m = load_style_features()
    assert not m.training and all(isinstance(m[i], nn.ReLU) for i in STYLE_LAYERS)
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 11)
    with pytest.raises(FileNotFoundError): load_style_features(tmp_path / 'none.safetensors')
    assert style_feature_net()(torch.zeros(2, 3, 20, 20)).shape == (2, 11)
