"Tests for miniai.finetune: one-cycle schedules against their closed forms, lr groups from slices, freezing (BatchNorm stays trainable), the kept optimizer across freeze/unfreeze, fine_tune's sequence, resuming a one-cycle fit."
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.callback import Callback, CancelFitException
from miniai.checkpoint import CheckpointCB
from miniai.datasets import TensorLoader
from miniai.learner import Learner, TrainCB
from miniai.sgd import Adam
from miniai.finetune import (ParamScheduler, combined_cos, default_splitter, ensure_group_opt, even_mults, lrs_for,
                             norm_params, param_groups, sched_cos)


def cos_closed(lo, hi, p):
    "Half a cosine from lo (p=0) to hi (p=1), written independently of the module."
    return hi + (lo - hi) * (1 + math.cos(math.pi * p)) / 2


def one_cycle_closed(pos, lr_max, div, div_final, pct):
    return cos_closed(lr_max / div, lr_max, pos / pct) if pos < pct else cos_closed(lr_max, lr_max / div_final, (pos - pct) / (1 - pct))


def make_dls(n=96, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return SimpleNamespace(train=TensorLoader(x[:64], y[:64], bs, shuffle=True, generator=torch.Generator().manual_seed(seed + 1), tfm=None),
                           valid=TensorLoader(x[64:], y[64:], 32, tfm=None))


def make_model(seed=0):
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    return nn.Sequential(body, head)


def two_groups(m): return [list(m[0].parameters()), list(m[1].parameters())]
def three_groups(m): return [list(m[0][:2].parameters()), list(m[0][2:].parameters()), list(m[1].parameters())]


def make_learn(opt_func=Adam, splitter=two_groups, seed=0, lr=1e-2):
    learn = Learner(make_model(seed), make_dls(seed=seed), F.cross_entropy, lr=lr, cbs=[TrainCB()], opt_func=opt_func)
    learn.splitter = splitter
    return learn


class UsedHypers(Callback):
    "Records each group's lr and momentum as the optimizer step sees them (after every training step)."
    order = 100
    def before_fit(self, learn): self.lrs, self.moms, self.frozen, self.n_epochs = [], [], None, learn.n_epochs
    def after_step(self, learn):
        pgs = learn.opt.param_groups
        self.lrs.append([g['lr'] for g in pgs])
        self.moms.append([g['betas'][0] if 'betas' in g else g.get('momentum') for g in pgs])
        if self.frozen is None: self.frozen = [[p.requires_grad for p in g['params']] for g in pgs]


def test_even_mults_is_geometric():
    rng = np.random.default_rng(0)
    for _ in range(5):
        lo, hi, n = float(rng.uniform(1e-6, 1e-4)), float(rng.uniform(1e-3, 1e-1)), int(rng.integers(2, 7))
        np.testing.assert_allclose(even_mults(lo, hi, n), np.geomspace(lo, hi, n), rtol=1e-12)
    assert even_mults(1e-5, 1e-3, 1) == [1e-3]


def test_combined_cos_closed_form():
    rng = np.random.default_rng(1)
    for _ in range(5):
        pct, a, b, c = rng.uniform(0.05, 0.95), *rng.uniform(0, 2, 3)
        f = combined_cos(pct, a, b, c)
        for pos in rng.uniform(0, 1, 20):
            exp = cos_closed(a, b, pos / pct) if pos < pct else cos_closed(b, c, (pos - pct) / (1 - pct))
            assert math.isclose(f(pos), exp, rel_tol=1e-12, abs_tol=1e-15)
        assert (f(0), f(pct), f(1)) == pytest.approx((a, b, c))
    assert sched_cos(2., 4., 0.5) == pytest.approx(3.)
    with pytest.raises(ValueError, match='pct_start'): combined_cos(1.5, 0, 1, 0)


def test_lrs_for():
    assert lrs_for(slice(1e-5, 1e-3), 3) == pytest.approx([1e-5, 1e-4, 1e-3])
    assert lrs_for(slice(1e-3), 3) == pytest.approx([1e-4, 1e-4, 1e-3])
    assert lrs_for(1e-3, 2) == [1e-3, 1e-3]
    assert lrs_for([1e-3, 2e-3], 2) == [1e-3, 2e-3]
    with pytest.raises(ValueError, match='2 parameter groups'): lrs_for([1e-3], 2)
    with pytest.raises(ValueError, match='non-negative'): lrs_for(-1., 2)
    with pytest.raises(ValueError, match='stop'): lrs_for(slice(1e-3, None), 2)


@pytest.mark.parametrize('opt', ['adam', 'sgd_mom', 'sgd'])
def test_fit_one_cycle_follows_the_formula(opt):
    opt_func = {'adam': Adam, 'sgd_mom': lambda ps, lr: torch.optim.SGD(ps, lr, momentum=0.9),
                'sgd': lambda ps, lr: torch.optim.SGD(ps, lr)}[opt]
    learn = make_learn(opt_func, three_groups)
    rec = UsedHypers()
    lo, hi, div, div_final, pct, n_ep = 1e-4, 1e-2, 10., 1e4, 0.3, 3
    learn.fit_one_cycle(n_ep, slice(lo, hi), div=div, div_final=div_final, pct_start=pct, cbs=[rec])
    n = len(rec.lrs)
    assert n == n_ep * len(learn.dls.train)
    maxes = np.geomspace(lo, hi, 3)
    for i, (lrs, moms) in enumerate(zip(rec.lrs, rec.moms)):
        pos = i / n
        np.testing.assert_allclose(lrs, [one_cycle_closed(pos, m, div, div_final, pct) for m in maxes], rtol=1e-10)
        if opt == 'sgd': assert moms == [0, 0, 0]                    # plain SGD keeps no momentum: none is scheduled
        else: np.testing.assert_allclose(moms, [0.95 - 0.1 * (1 - math.cos(math.pi * pos / pct)) / 2 if pos < pct else
                                                0.85 + 0.1 * (1 - math.cos(math.pi * (pos - pct) / (1 - pct))) / 2] * 3, rtol=1e-10)


def test_one_cycle_resumes_exactly(tmp_path):
    "The schedule depends on the epoch and batch only: a fit stopped after 2 epochs and resumed from its checkpoint ends with the same weights."
    ref = make_learn()
    ref.fit_one_cycle(4, 1e-2)

    class StopAt(Callback):
        order = 100
        def after_full_epoch(self, learn):
            if learn.epoch == 1: raise CancelFitException()
    a = make_learn()
    a.fit_one_cycle(4, 1e-2, cbs=[CheckpointCB(tmp_path / 'ck.pt'), StopAt()])
    b = make_learn()
    b.model.load_state_dict(make_model(5).state_dict())   # other weights: everything must come from the checkpoint
    rec = UsedHypers()
    b.fit_one_cycle(4, 1e-2, resume_from=tmp_path / 'ck.pt', cbs=[rec])
    n_iter = len(b.dls.train)
    assert len(rec.lrs) == 2 * n_iter
    assert rec.lrs[0][1] == pytest.approx(one_cycle_closed(0.5, 1e-2, 25., 1e5, 0.25))
    for p, q in zip(ref.model.state_dict().values(), b.model.state_dict().values()): torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_freeze_keeps_body_fixed_and_bn_trainable():
    learn = make_learn()
    learn.freeze()
    body, head = learn.model
    conv_w, bn_w, head_w = body[0].weight.clone(), body[1].weight.clone(), head[2].weight.clone()
    run_mean = body[1].running_mean.clone()
    learn.fit_one_cycle(1, 1e-2)
    assert torch.equal(body[0].weight, conv_w) and torch.equal(body[3].weight, make_model()[0][3].weight)
    assert not torch.equal(body[1].weight, bn_w)           # train_bn: BatchNorm learns in a frozen body
    assert not torch.equal(body[1].running_mean, run_mean)
    assert not torch.equal(head[2].weight, head_w)
    assert set(map(id, norm_params(learn.model))) == {id(body[1].weight), id(body[1].bias)}
    assert [p.requires_grad for p in body.parameters()] == [False, False, True, True, False, False]
    learn.freeze(train_bn=False)
    assert not any(p.requires_grad for p in body.parameters())
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
    w = body[0].weight.clone()
    learn.fit_one_cycle(1, 1e-2)
    assert not torch.equal(body[0].weight, w)


def test_kept_optimizer_follows_the_groups():
    learn = make_learn()
    learn.fit(1)                                        # a plain fit: Learner.create_opt makes one group of all parameters
    assert len(learn.opt.param_groups) == 1
    learn.freeze()                                      # the groups changed: the optimizer is rebuilt with the splitter's groups
    opt = learn.opt
    assert [[id(p) for p in g['params']] for g in opt.param_groups] == [[id(p) for p in g] for g in two_groups(learn.model)]
    learn.fit_one_cycle(1, 1e-2)
    assert len(opt.state) > 0
    learn.unfreeze()                                    # same groups: the same optimizer, its state cleared (fastai's clear_state)
    assert learn.opt is opt and len(opt.state) == 0
    assert [g['lr'] for g in opt.param_groups] == learn.one_cycle.hps['lr'][-1]   # the last batch's
    learn.fit(1, lr=1e-3)                               # a plain fit keeps the grouped optimizer
    assert learn.opt is opt and [g['lr'] for g in opt.param_groups] == [1e-3, 1e-3]
    learn.splitter = three_groups                       # a new splitter: a new optimizer with three groups
    learn.fit_one_cycle(1, slice(1e-4, 1e-2))
    assert learn.opt is not opt and len(learn.opt.param_groups) == 3
    learn.model = make_model(3)                         # a new model: its own parameters, not the old ones
    learn.freeze()
    assert {id(p) for g in learn.opt.param_groups for p in g['params']} == {id(p) for p in learn.model.parameters()}
    learn.fit_one_cycle(1, reset_opt=True)
    assert learn.opt is not None


def test_fine_tune_is_fastais_sequence():
    learn = make_learn(splitter=three_groups)
    rec = UsedHypers()
    fits = []
    class Phase(Callback):
        order = 101
        def after_fit(self, l): fits.append((l.n_epochs, list(rec.lrs), list(rec.moms), rec.frozen))
    base, lr_mult, div = 4e-3, 50, 4.
    learn.fine_tune(2, base_lr=base, freeze_epochs=1, lr_mult=lr_mult, div=div, pct_start=0.2, cbs=[rec, Phase()])
    (n1, lrs1, moms1, frozen1), (n2, lrs2, moms2, frozen2) = fits
    assert (n1, n2) == (1, 2)
    assert frozen1 == [[False, False, True, True], [False, False], [True, True]]   # body frozen but its BatchNorm; head trainable
    assert all(all(g) for g in frozen2)
    for i, lrs in enumerate(lrs1):
        pos = i / len(lrs1)
        np.testing.assert_allclose(lrs, [one_cycle_closed(pos, m, 25., 1e5, 0.99) for m in (base / 10, base / 10, base)], rtol=1e-10)
    maxes = np.geomspace(base / 2 / lr_mult, base / 2, 3)
    for i, lrs in enumerate(lrs2):
        pos = i / len(lrs2)
        np.testing.assert_allclose(lrs, [one_cycle_closed(pos, m, div, 1e5, 0.2) for m in maxes], rtol=1e-10)


def test_param_groups_checks():
    learn = make_learn(splitter=lambda m: [list(m.parameters()), list(m[1].parameters())])
    with pytest.raises(ValueError, match='groups 0 and 1'): param_groups(learn)
    learn.splitter = lambda m: [list(m[1].parameters())]
    with pytest.warns(UserWarning, match='never trained'): param_groups(learn)
    learn.splitter = None
    assert len(param_groups(learn)) == 1 and default_splitter(learn.model)[0][0] is learn.model[0][0].weight
    learn = make_learn()
    with pytest.warns(UserWarning, match='whole model is frozen'): learn.freeze_to(5)
    with pytest.raises(TypeError, match='int'): learn.freeze_to(1.5)
    with pytest.raises(ValueError, match='pct_start'): learn.fit_one_cycle(1, pct_start=2)
    with pytest.raises(ValueError, match='div'): learn.fit_one_cycle(1, div=0)


def test_optimizer_without_param_groups_is_refused():
    class Plain:
        def __init__(self, params, lr): self.params, self.lr = list(params), lr
        def step(self): pass
        def zero_grad(self): pass
    learn = make_learn(opt_func=Plain)
    with pytest.raises(TypeError, match='param_groups'): ensure_group_opt(learn)


def test_param_scheduler_checks_group_count():
    learn = make_learn()
    with pytest.raises(ValueError, match='1 lr schedules for 2'):
        ensure_group_opt(learn)
        learn.fit(1, cbs=[ParamScheduler([lambda p: 1e-3])])


def test_freeze_drops_stale_gradients():
    "A gradient left from before freezing must not move a frozen parameter at the next optimizer step."
    learn = make_learn(opt_func=lambda ps, lr: torch.optim.SGD(ps, lr))
    ensure_group_opt(learn)
    for p in learn.model.parameters(): p.grad = torch.ones_like(p)
    learn.freeze()
    w = learn.model[0][0].weight.clone()
    learn.opt.step()
    assert learn.model[0][0].weight.grad is None and torch.equal(learn.model[0][0].weight, w)
