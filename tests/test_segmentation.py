"Tests for miniai.segmentation: where the skips are, output sizes, hooks, mean IoU against scikit-learn, export round trip."
import math

import pytest
import torch
from torch import nn

from miniai.segmentation import DynamicUnet, MeanIoU, PixelAccuracy, model_sizes, size_change_idxs, unet_learner, unet_model
from miniai.vision import image_dls
from miniai.export import load_learner


def test_size_change_idxs():
    sizes = [(1, 8, 32, 32), (1, 8, 32, 32), (1, 16, 16, 16), (1, 32, 8, 8), (1, 32, 8, 8), (1, 64, 4, 4)]
    assert size_change_idxs(sizes) == [1, 2, 4]


def test_unet_shapes_and_hooks():
    body = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, stride=2, padding=1))
    m = DynamicUnet(body, 5, 2, (20, 20))
    assert [s[-1] for s in model_sizes(body, 2, (20, 20))] == [20, 10, 10, 5, 3]
    assert len(m.blocks) == 3 and [b.hook.handle is not None for b in m.blocks] == [True] * 3
    x = torch.randn(3, 2, 20, 20)
    out = m(x)
    assert out.shape == (3, 5, 20, 20)
    assert m.blocks[0].hook.stored.shape == (3, 16, 5, 5) and m.blocks[-1].hook.stored.shape == (3, 4, 20, 20)
    out.sum().backward()
    assert body[0].weight.grad is not None and body[0].weight.grad.abs().sum() > 0


def test_torchvision_body():
    pytest.importorskip('torchvision')
    m = unet_model('resnet18', 3, n_in=3, img_size=(64, 64))
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    assert len(m.blocks) == 4   # skips after relu (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16), as fastai.s


def test_metrics_against_sklearn():
    skm = pytest.importorskip('sklearn.metrics')
    g = torch.Generator().manual_seed(0)
    preds, targs = torch.randn(6, 4, 5, 5, generator=g), torch.randint(0, 4, (6, 5, 5), generator=g)
    targs[targs == 3] = 2   # class 3 may still be predicted, but never labelled
    m, pa = MeanIoU(4), PixelAccuracy()
    for sl in (slice(0, 2), slice(2, 6)): m.update(preds[sl], targs[sl]); pa.update(preds[sl], targs[sl])
    p = preds.argmax(1).flatten().numpy(); t = targs.flatten().numpy()
    present = sorted(set(p) | set(t))
    exp = skm.jaccard_score(t, p, labels=present, average='macro')
    assert math.isclose(m.compute().item(), exp, rel_tol=1e-6)
    assert math.isclose(pa.compute().item(), (p == t).mean(), rel_tol=1e-6)
    with pytest.raises(ValueError, match='PixelAccuracy'): PixelAccuracy().update(preds, targs[:, 0])


def test_unet_learner_export_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 16, 16), dtype=torch.uint8, generator=g)
    y = (x > 128).long() + (x > 200).long()
    dls = image_dls((x, y), (x[:8], y[:8]), bs=8, vocab=['bg', 'mid', 'high'], generator=g)
    torch.manual_seed(0)
    learn = unet_learner(dls, 'resnet', pretrained=False, device='cpu', progress=False)
    learn.fit_one_cycle(1, 1e-2)
    learn.export(tmp_path / 's.safetensors')
    l2 = load_learner(tmp_path / 's.safetensors')
    p1, t1 = learn.get_preds(); p2, _ = l2.get_preds(dls.valid)
    assert torch.equal(p1, p2) and p1.shape == (8, 3, 16, 16)
    mask = l2.predict(x[0])[0]
    assert mask.shape == (16, 16) and torch.equal(mask, p1[0].argmax(0))
