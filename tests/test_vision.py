"Tests for miniai.vision: the safe MNIST unpickler, cutting bodies, fastai's head, weights loading, the splitter, vision_learner."
import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from miniai.vision import (AdaptiveConcatPool2d, Normalize, SigmoidRange, create_body, create_head, image_dls, load_mnist,
                           read_mnist_pickle, vision_learner, vision_model, vision_splitter, _NumpyUnpickler)
from miniai.resnet import get_resnet


class Evil:
    def __reduce__(self): return (os.system, ('echo pwned',))


def write_fake_mnist(path, n=(5, 3, 2), seed=0):
    rng = np.random.default_rng(seed)
    splits = []
    for k in n:
        x = rng.integers(0, 256, (k, 784)).astype(np.float32) / 255
        splits.append((x, rng.integers(0, 10, k).astype(np.int64)))
    with gzip.open(path, 'wb') as f: pickle.dump(tuple(splits), f, protocol=4)
    return splits


def test_numpy_unpickler_refuses_code_and_objects(tmp_path):
    with pytest.raises(pickle.UnpicklingError, match='posix.system|os.system|refusing'):
        _NumpyUnpickler(__import__('io').BytesIO(pickle.dumps(Evil()))).load()
    with pytest.raises(pickle.UnpicklingError, match='object dtype'):
        _NumpyUnpickler(__import__('io').BytesIO(pickle.dumps(np.array([1, 'a'], dtype=object), protocol=4))).load()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_NumpyUnpickler(__import__('io').BytesIO(pickle.dumps(a, protocol=4))).load(), a)


def test_read_mnist_pickle_roundtrip(tmp_path):
    splits = write_fake_mnist(tmp_path / 'm.pkl.gz')
    res = read_mnist_pickle(tmp_path / 'm.pkl.gz')
    for (x, y), nm in zip(splits, ('train', 'valid', 'test')):
        np.testing.assert_array_equal(res[nm][0].reshape(len(x), -1), np.rint(x * 255).astype(np.uint8))
        np.testing.assert_array_equal(res[nm][1], y)
    d = load_mnist(tmp_path / 'm.pkl.gz', cache=tmp_path / 'cache')
    assert d['train'][0].shape == (5, 28, 28) and d['train'][0].dtype == torch.uint8
    assert len(list((tmp_path / 'cache' / 'mnist').glob('*.npz'))) == 1
    d2 = load_mnist(tmp_path / 'm.pkl.gz', cache=tmp_path / 'cache')   # from the cache
    assert torch.equal(d['test'][0], d2['test'][0])
    with gzip.open(tmp_path / 'bad.pkl.gz', 'wb') as f: pickle.dump(Evil(), f)
    with pytest.raises(pickle.UnpicklingError): read_mnist_pickle(tmp_path / 'bad.pkl.gz')
    with gzip.open(tmp_path / 'odd.pkl.gz', 'wb') as f: pickle.dump((np.zeros(3),), f, protocol=4)
    with pytest.raises(ValueError, match='three'): read_mnist_pickle(tmp_path / 'odd.pkl.gz')


def test_real_mnist_if_installed():
    try: d = load_mnist()
    except FileNotFoundError as e: pytest.skip(str(e))
    assert [len(d[k][0]) for k in ('train', 'valid', 'test')] == [50000, 10000, 10000]
    assert d['test'][1][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]   # MNIST's first test labels


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
