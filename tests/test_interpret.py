"Tests for miniai.interpret: get_preds against a direct forward pass, per-item losses, predict (and the training step of the same name), the confusion matrix against scikit-learn's."
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.callback import Callback
from miniai.datasets import TensorLoader
from miniai.learner import Learner, TrainCB, TrainLearner
from miniai.interpret import ClassificationInterpretation, image_batch, predict_item


def make_learn(n=40, seed=0, n_cls=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 6, 6), dtype=torch.uint8, generator=g)
    y = torch.randint(0, n_cls, (n,), generator=g)
    dls = SimpleNamespace(train=TensorLoader(x, y, 8, shuffle=True, generator=g), valid=TensorLoader(x, y, 16))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, n_cls))
    learn = Learner(model, dls, F.cross_entropy, lr=0.1, cbs=[TrainCB()])
    learn.vocab = [f'c{i}' for i in range(n_cls)]
    return learn, x, y


class Events(Callback):
    def __init__(self): self.n = 0
    def before_fit(self, learn): self.n += 1


def test_get_preds_matches_a_direct_forward_pass():
    learn, x, y = make_learn()
    ev = Events(); learn.cbs.append(ev)
    learn.model.train()
    inp, preds, targs, losses = learn.get_preds(with_input=True, with_loss=True)
    assert learn.model.training and ev.n == 0 and learn.epochs_done == 0   # no fit, mode restored
    learn.model.eval()
    with torch.no_grad(): out = learn.model(x.float()[:, None] / 255)
    torch.testing.assert_close(preds, F.softmax(out, 1))
    torch.testing.assert_close(losses, F.cross_entropy(out, y, reduction='none'))
    assert torch.equal(targs, y) and torch.equal(inp, x.float()[:, None] / 255)
    raw, _ = learn.get_preds(act=False)
    torch.testing.assert_close(raw, out)


def test_item_losses_without_a_reduction_argument():
    learn, x, y = make_learn()
    learn.loss_func = lambda p, t: F.cross_entropy(p, t)   # takes no reduction=: each item's loss alone
    *_, losses = learn.get_preds(with_loss=True)
    learn.model.eval()
    with torch.no_grad(): out = learn.model(x.float()[:, None] / 255)
    torch.testing.assert_close(losses, F.cross_entropy(out, y, reduction='none'))


def test_predict_item_and_the_training_step_share_the_name():
    learn, x, y = make_learn()
    with warnings.catch_warnings():
        warnings.simplefilter('error')        # no "defines predict() itself" warning: TrainCB.predict still runs
        learn.fit(1)
    label, idx, probs = learn.predict(x[3])
    learn.model.eval()
    with torch.no_grad(): p = F.softmax(learn.model(x[3:4].float()[:, None] / 255), 1)[0]
    torch.testing.assert_close(probs, p)
    assert idx == int(p.argmax()) and label == learn.vocab[idx]
    assert predict_item(learn, x[3])[1] == idx
    class TL(TrainLearner): pass              # the course's subclass keeps its own step
    tl = TL(make_learn()[0].model, learn.dls, F.cross_entropy, lr=0.1)
    tl.fit(1)


def test_image_batch_forms():
    im = torch.randint(0, 256, (5, 7), dtype=torch.uint8)
    assert torch.equal(image_batch(im), im.float()[None, None] / 255)
    rgb = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    assert image_batch(rgb).shape == (1, 3, 5, 7)
    assert image_batch(torch.rand(3, 5, 7)).shape == (1, 3, 5, 7)
    with pytest.raises(TypeError, match='uint8'): image_batch(torch.ones(5, 7, dtype=torch.int32))


def test_confusion_matrix_against_sklearn():
    skm = pytest.importorskip('sklearn.metrics')
    g = torch.Generator().manual_seed(1)
    n, c = 200, 5
    preds = F.softmax(torch.randn(n, c, generator=g), 1)
    targs = torch.randint(0, c, (n,), generator=g)
    losses = F.nll_loss(preds.log(), targs, reduction='none')
    learn = SimpleNamespace(vocab=list('abcde'))
    interp = ClassificationInterpretation(learn, None, preds, targs, losses)
    cm = interp.confusion_matrix()
    assert cm.tolist() == skm.confusion_matrix(targs, preds.argmax(1), labels=range(c)).tolist()
    mc = interp.most_confused(min_val=2)
    assert all(a != p and k >= 2 for a, p, k in mc) and [k for *_, k in mc] == sorted((k for *_, k in mc), reverse=True)
    off = cm.clone().fill_diagonal_(0)
    assert sum(k for *_, k in interp.most_confused()) == off.sum()
    vals, idx = interp.top_losses(5)
    assert torch.equal(vals, losses.sort(descending=True).values[:5]) and torch.equal(losses[idx], vals)
