"""Tests for miniai.training: samplers and DataLoader against torch's, accuracy, fit."""
import itertools

import pytest
import torch
import torch.nn.functional as F
import torch.utils.data
from torch import nn

from miniai.training import (BatchSampler, DataLoader, Dataset, Sampler, accuracy, collate, fit, get_dls, report)


def _gen(seed): return torch.Generator().manual_seed(seed)


def _ds(n, seed=0):
    g = _gen(seed)
    return Dataset(torch.randn(n, 3, generator=g), torch.randint(0, 5, (n,), generator=g))


def test_accuracy_vs_hand_count():
    g = _gen(0)
    out, yb = torch.randn(37, 6, generator=g), torch.randint(0, 6, (37,), generator=g)
    hits = sum(int(max(range(6), key=lambda j: out[i, j].item()) == yb[i].item()) for i in range(37))
    assert accuracy(out, yb).item() == pytest.approx(hits / 37)
    assert accuracy(torch.tensor([[0., 1.], [2., 1.], [0., 3.]]), torch.tensor([1, 1, 1])).item() == pytest.approx(2 / 3)


def test_report_prints(capsys):
    out = torch.tensor([[0., 1.], [2., 1.]])
    report(torch.tensor(0.5, requires_grad=True), out, torch.tensor([1, 1]))
    assert capsys.readouterr().out.strip() == '0.50, 0.50'


def test_dataset():
    x, y = torch.arange(10.), torch.arange(10) * 2
    ds = Dataset(x, y)
    assert len(ds) == 10 and ds[3] == (3., 6)
    xb, yb = ds[2:5]
    assert xb.tolist() == [2., 3., 4.] and yb.tolist() == [4, 6, 8]
    with pytest.raises(ValueError, match="same length"): Dataset(x, y[:9])


@pytest.mark.parametrize("shuffle", [False, True])
def test_sampler_covers_each_index_once(shuffle):
    s = Sampler(range(23), shuffle=shuffle, generator=_gen(1))
    for _ in range(2):   # every pass is a permutation
        idx = list(s)
        assert sorted(idx) == list(range(23)) and len(s) == 23
    if not shuffle: assert idx == list(range(23))


def test_sampler_shuffles_and_is_reproducible():
    a = list(Sampler(range(50), shuffle=True, generator=_gen(7)))
    b = list(Sampler(range(50), shuffle=True, generator=_gen(7)))
    assert a == b and a != list(range(50))
    s = Sampler(range(50), shuffle=True, generator=_gen(7))
    assert list(s) == a and list(s) != a   # the generator moves on: a new order each epoch
    # same permutation as torch's RandomSampler given the same seed
    assert a == list(torch.utils.data.RandomSampler(range(50), generator=_gen(7)))


@pytest.mark.parametrize("n,bs,drop_last,shuffle", list(itertools.product([10, 12, 1], [1, 3, 4, 12, 20], [False, True], [False, True])))
def test_batch_sampler(n, bs, drop_last, shuffle):
    bsamp = BatchSampler(Sampler(range(n), shuffle=shuffle, generator=_gen(n + bs)), bs, drop_last)
    batches = list(bsamp)
    ref = list(torch.utils.data.BatchSampler(range(n), bs, drop_last))
    assert len(bsamp) == len(ref) == len(batches)
    assert [len(b) for b in batches] == [len(b) for b in ref]
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)   # no index twice
    if drop_last: assert len(flat) == (n // bs) * bs
    else: assert sorted(flat) == list(range(n))   # each index exactly once
    if not shuffle: assert batches == ref


@pytest.mark.parametrize("bs", [0, -2, 1.5, None, True])
def test_batch_sampler_bad_bs(bs):
    with pytest.raises(ValueError, match="batch size must be a positive int"): BatchSampler(Sampler(range(4)), bs)


def test_collate():
    b = [(torch.full((2,), float(i)), torch.tensor(i)) for i in range(3)]
    xb, yb = collate(b)
    assert xb.shape == (3, 2) and yb.tolist() == [0, 1, 2]
    ref = torch.utils.data.default_collate(b)
    assert all(torch.equal(a, r) for a, r in zip((xb, yb), ref))
    assert collate([(torch.zeros(1), 3), (torch.ones(1), 4)])[1].tolist() == [3, 4]
    with pytest.raises(ValueError, match="empty"): collate([])


def _assert_same_batches(ours, theirs):
    ours, theirs = list(ours), list(theirs)
    assert len(ours) == len(theirs)
    for a, t in zip(ours, theirs):
        assert len(a) == len(t) and all(torch.equal(u, v) for u, v in zip(a, t))


@pytest.mark.parametrize("bs,drop_last", [(1, False), (4, False), (4, True), (7, False), (30, False)])
def test_dataloader_matches_torch(bs, drop_last):
    ds = _ds(25)
    order = torch.randperm(25, generator=_gen(bs)).tolist()
    ours = DataLoader(ds, batch_size=bs, sampler=order, drop_last=drop_last)
    theirs = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=order, drop_last=drop_last)
    assert len(ours) == len(theirs)
    _assert_same_batches(ours, theirs)
    _assert_same_batches(DataLoader(ds, batch_size=bs, drop_last=drop_last),
                         torch.utils.data.DataLoader(ds, batch_size=bs, drop_last=drop_last))


def test_dataloader_batch_sampler_and_no_batching():
    ds = _ds(10)
    bsamp = [[3, 1], [0, 9, 8], [5]]
    _assert_same_batches(DataLoader(ds, batch_sampler=bsamp), torch.utils.data.DataLoader(ds, batch_sampler=bsamp))
    items = list(DataLoader(ds, batch_size=None, sampler=[4, 2]))
    assert len(items) == 2 and torch.equal(items[0][0], ds[4][0]) and torch.equal(items[1][1], ds[2][1])


def test_dataloader_shuffle_generator():
    ds = _ds(30)
    a = [yb.tolist() for _, yb in DataLoader(ds, batch_size=8, shuffle=True, generator=_gen(5))]
    b = [yb.tolist() for _, yb in DataLoader(ds, batch_size=8, shuffle=True, generator=_gen(5))]
    assert a == b
    order = list(torch.utils.data.RandomSampler(range(30), generator=_gen(5)))
    assert [i for xb, _ in DataLoader(ds, batch_size=8, shuffle=True, generator=_gen(5))
            for i in [int((ds.x == row).all(1).nonzero()) for row in xb]] == order


def test_dataloader_workers_same_batches():
    ds = _ds(40)
    _assert_same_batches(DataLoader(ds, batch_size=6, num_workers=2), DataLoader(ds, batch_size=6))


def test_dataloader_bad_args():
    ds = _ds(5)
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"): DataLoader(ds, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler is mutually exclusive"): DataLoader(ds, batch_size=2, batch_sampler=[[0]])
    with pytest.raises(ValueError, match="batch_size must be a positive int"): DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"): DataLoader(ds, num_workers=-1)


def test_fit_reduces_loss(capsys):
    # a linearly separable 2-class problem: the label is which side of a random hyperplane a point lies on
    g = _gen(0)
    w = torch.randn(5, generator=g)
    x = torch.randn(400, 5, generator=g)
    y = (x @ w > 0).long()
    train_ds, valid_ds = Dataset(x[:300], y[:300]), Dataset(x[300:], y[300:])
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    with torch.no_grad(): loss0 = F.cross_entropy(model(valid_ds.x), valid_ds.y).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, acc = fit(3, model, F.cross_entropy, opt, DataLoader(train_ds, 32, shuffle=True, generator=_gen(1)),
                    DataLoader(valid_ds, 64))
    assert loss < loss0 / 2 and acc > 0.9
    lines = capsys.readouterr().out.strip().split('\n')
    assert len(lines) == 3 and lines[-1].split()[0] == '2'
    with torch.no_grad():   # the returned numbers are the validation loss/accuracy of the final model
        assert loss == pytest.approx(F.cross_entropy(model(valid_ds.x), valid_ds.y).item(), rel=1e-5)
        assert acc == pytest.approx(accuracy(model(valid_ds.x), valid_ds.y).item(), rel=1e-5)
    with pytest.raises(ValueError, match="epochs"): fit(0, model, F.cross_entropy, opt, [], [])


def test_get_dls():
    train_ds, valid_ds = _ds(20), _ds(12, 1)
    tdl, vdl = get_dls(train_ds, valid_ds, 4, generator=_gen(0))
    assert isinstance(tdl, torch.utils.data.DataLoader) and isinstance(vdl, torch.utils.data.DataLoader)
    assert tdl.batch_size == 4 and vdl.batch_size == 8
    assert isinstance(tdl.sampler, torch.utils.data.RandomSampler)
    assert isinstance(vdl.sampler, torch.utils.data.SequentialSampler)
    assert sum(len(xb) for xb, _ in tdl) == 20 and len(vdl) == 2
