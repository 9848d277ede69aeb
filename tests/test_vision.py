"Tests for miniai.vision (MNIST loading is miniai.mnist's, tests/test_mnist.py): cutting bodies, fastai's head, weights loading, the splitter, vision_learner."

import pytest
import torch
from torch import nn

from miniai.vision import (AdaptiveConcatPool2d, Normalize, SigmoidRange, create_body, create_head, image_dls,
                           vision_learner, vision_model, vision_splitter)
from miniai.resnet import get_resnet


def test_concat_pool_and_sigmoid_range():
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    out = AdaptiveConcatPool2d()(x)
    torch.testing.assert_close(out[:, :4, 0, 0], x.amax((2, 3)))
    torch.testing.assert_close(out[:, 4:, 0, 0], x.mean((2, 3)))
    torch.testing.assert_close(SigmoidRange(-1, 3)(x), torch.sigmoid(x) * 4 - 1)
    with pytest.raises(ValueError, match='low < high'): SigmoidRange(2, 1)
    torch.testing.assert_close(Normalize([0.5], [0.25])(x[:, :1].float()), (x[:, :1].float() - 0.5) / 0.25)


def test_create_head_is_fastais():
    h = create_head(16, 3, lin_ftrs=[8], ps=0.5)
    kinds = [type(m).__name__ for m in h]
    assert kinds == ['AdaptiveConcatPool2d', 'Flatten', 'BatchNorm1d', 'Dropout', 'Linear', 'ReLU', 'BatchNorm1d', 'Dropout', 'Linear']
    assert h[2].num_features == 32 and h[3].p == 0.25 and h[7].p == 0.5
    assert h[4].bias is None and (h[4].in_features, h[4].out_features, h[8].out_features) == (32, 8, 3)
    assert type(create_head(16, 2, y_range=(0, 1))[-1]).__name__ == 'SigmoidRange'


def test_torchvision_body_weights_and_groups():
    torchvision = pytest.importorskip('torchvision')
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    body, stats = create_body('resnet18', n_in=1, weights=tv.state_dict())
    assert list(dict(body.named_children())) == ['conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4']
    torch.testing.assert_close(body.conv1.weight, tv.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(body.layer3[0].conv1.weight, tv.layer3[0].conv1.weight)
    x = torch.rand(2, 3, 32, 32)
    body3, _ = create_body('resnet18', n_in=3, weights=tv.state_dict())
    tv.eval(); body3.eval()
    feats = nn.Sequential(*list(tv.children())[:-2])(x)
    torch.testing.assert_close(body3(x), feats)
    m = vision_model('resnet18', 5, n_in=3, weights=tv.state_dict(), lin_ftrs=[16])
    torch.testing.assert_close(m[0].norm.mean.flatten(), torch.tensor(stats[0]))
    g = vision_splitter(m)
    assert len(g) == 3 and sum(map(len, g)) == len(list(m.parameters()))
    assert g[1][0] is m[0].layer3[0].conv1.weight
    bad = dict(tv.state_dict()); bad.pop('fc.bias')
    with pytest.raises(ValueError, match='missing'): create_body('resnet18', weights=bad)
    with pytest.raises(ValueError, match='unknown architecture'): create_body('vgg')


def test_library_bodies_cut_before_the_head():
    body, _ = create_body(get_resnet(n_in=1), n_in=1)
    assert len(body) == 6 and all(type(b).__name__ == 'ResBlock' for b in body)
    body, stats = create_body('fmnist_classifier', n_in=1)
    assert stats == ([0.5], [0.5]) and len(body) == 6


def make_dls(n=48, c=1, size=16, n_cls=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=g), torch.randint(0, n_cls, (n,), generator=g)
    return image_dls((x, y), (x[:16], y[:16]), bs=16, vocab=[f'c{i}' for i in range(n_cls)], generator=g)


def test_vision_learner_pretrained_is_frozen_and_trains():
    learn = vision_learner(make_dls(size=28), 'fmnist_classifier', lin_ftrs=[16], device='cpu', progress=False)
    assert len(learn.model[1][-1].weight) == 3 and learn.vocab == ['c0', 'c1', 'c2']
    body = learn.model[0]
    conv = body[1].convs[0][0]
    assert not conv.weight.requires_grad and body[1].convs[0][1].weight.requires_grad
    w = conv.weight.clone()
    learn.fit_one_cycle(1)
    assert torch.equal(conv.weight, w)
    learn.unfreeze(); learn.fit_one_cycle(1)
    assert not torch.equal(conv.weight, w)
    scratch = vision_learner(make_dls(size=28), 'fmnist_classifier', pretrained=False, lin_ftrs=[16], device='cpu', progress=False)
    assert all(p.requires_grad for p in scratch.model.parameters())
    x = next(iter(make_dls(size=28).train))[0]
    torch.testing.assert_close(scratch.model[0].norm.mean.flatten(), x.mean().reshape(1))   # the data's own statistics
    with pytest.raises(ValueError, match='n_out'):
        dls = make_dls(); dls.vocab = None; vision_learner(dls, 'resnet', device='cpu')
