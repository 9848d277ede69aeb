"""miniai.sgd: optimizers from scratch against torch (float64, many steps) and hand-computed steps; schedule callbacks."""
import io
import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.sgd import SGD, Momentum, RMSProp, Adam, BatchSchedCB, EpochSchedCB, HasLearnCB, RecorderCB

N_STEPS = 50
SHAPES = [(7, 3), (5,), (2, 3, 4)]


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in SHAPES]


def _grads(seed, n_steps=N_STEPS):
    g = torch.Generator().manual_seed(seed + 1000)
    return [[torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(n_steps)]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs): p.grad = g.clone()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in params]


def _groups(params, lr2):
    "Two param groups, the second with its own lr, to check per-group hyperparameters."
    return [{'params': params[:2]}, {'params': params[2:], 'lr': lr2}]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lr,wd", [(0.1, 0.), (0.03, 0.05)])
def test_sgd_matches_torch_sgd(seed, lr, wd):
    grads = _grads(seed)
    p1, p2 = _params(seed), _params(seed)
    ours = _run(SGD(_groups(p1, lr/3), lr=lr, wd=wd), p1, grads)
    ref = _run(torch.optim.SGD(_groups(p2, lr/3), lr=lr, weight_decay=wd), p2, grads)
    for a, b in zip(ours, ref): torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("hp", [dict(lr=1e-2, wd=0., beta1=0.9, beta2=0.99, eps=1e-5),
                                dict(lr=3e-3, wd=0.1, beta1=0.8, beta2=0.95, eps=1e-8)])
def test_adam_matches_torch_adamw(seed, hp):
    grads = _grads(seed)
    p1, p2 = _params(seed), _params(seed)
    ours = _run(Adam(_groups(p1, hp['lr']*2), **hp), p1, grads)
    ref = _run(torch.optim.AdamW(_groups(p2, hp['lr']*2), lr=hp['lr'], weight_decay=hp['wd'],
                                 betas=(hp['beta1'], hp['beta2']), eps=hp['eps']), p2, grads)
    # float64: agreement to ~1e-12 relative after 50 steps (differences are rounding only)
    for a, b in zip(ours, ref): torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    # and it really moved: not a trivial agreement
    assert not torch.allclose(ours[0], _params(seed)[0])


def _momentum_by_hand(p, grads, lr, wd, mom):
    avg = torch.zeros_like(p)
    for g in grads:
        p = p * (1 - lr*wd)
        avg = mom*avg + (1-mom)*g
        p = p - lr*avg
    return p


def _rmsprop_by_hand(p, grads, lr, wd, sqr_mom, eps):
    sqr_avg = None
    for g in grads:
        p = p * (1 - lr*wd)
        sqr_avg = g**2 if sqr_avg is None else sqr_mom*sqr_avg + (1-sqr_mom)*g**2
        p = p - lr * g / (sqr_avg.sqrt() + eps)
    return p


@pytest.mark.parametrize("wd", [0., 0.1])
def test_momentum_matches_hand_computed(wd):
    grads = _grads(3)
    params = _params(3)
    start = [p.detach().clone() for p in params]
    ours = _run(Momentum(params, lr=0.05, wd=wd, mom=0.85), params, grads)
    for i, (a, p0) in enumerate(zip(ours, start)):
        exp = _momentum_by_hand(p0, [gs[i] for gs in grads], 0.05, wd, 0.85)
        torch.testing.assert_close(a, exp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("wd", [0., 0.1])
def test_rmsprop_matches_hand_computed(wd):
    grads = _grads(4)
    params = _params(4)
    start = [p.detach().clone() for p in params]
    ours = _run(RMSProp(params, lr=0.01, wd=wd, sqr_mom=0.9, eps=1e-6), params, grads)
    for i, (a, p0) in enumerate(zip(ours, start)):
        exp = _rmsprop_by_hand(p0, [gs[i] for gs in grads], 0.01, wd, 0.9, 1e-6)
        torch.testing.assert_close(a, exp, rtol=1e-12, atol=1e-12)


def test_momentum_and_rmsprop_differ_from_torch_as_documented():
    "The documented differences are real: torch's momentum sums, torch's RMSprop starts from 0."
    grads = _grads(5, 3)
    p1, p2 = _params(5), _params(5)
    ours = _run(Momentum(p1, lr=0.1, mom=0.9), p1, grads)
    ref = _run(torch.optim.SGD(p2, lr=0.1, momentum=0.9, dampening=0.9), p2, grads)
    # with dampening=mom torch's first step is the raw gradient, ours is (1-mom)*grad
    assert not torch.allclose(ours[0], ref[0])
    p1, p2 = _params(5), _params(5)
    ours = _run(RMSProp(p1, lr=0.01, sqr_mom=0.99, eps=1e-5), p1, grads)
    ref = _run(torch.optim.RMSprop(p2, lr=0.01, alpha=0.99, eps=1e-5), p2, grads)
    assert not torch.allclose(ours[0], ref[0])


def test_zero_grad_params_skipped_and_closure():
    a = torch.ones(3, requires_grad=True); b = torch.ones(2, requires_grad=True)
    opt = Adam([a, b], lr=0.1)
    def closure():
        opt.zero_grad()
        loss = (a**2).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert loss.item() == 3.
    assert torch.equal(b.detach(), torch.ones(2))  # no grad: untouched
    assert not torch.equal(a.detach(), torch.ones(3))


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, wd=0.01),
    lambda ps: Momentum(ps, lr=0.1, wd=0.01, mom=0.9),
    lambda ps: RMSProp(ps, lr=0.01, wd=0.01),
    lambda ps: Adam(ps, lr=0.01, wd=0.01)])
def test_state_dict_round_trip(make):
    grads = _grads(7, 20)
    p1 = _params(7)
    opt1 = make(p1)
    _run(opt1, p1, grads[:10])
    buf = io.BytesIO()
    torch.save({'params': [p.detach() for p in p1], 'opt': opt1.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    p2 = [p.clone().requires_grad_() for p in ck['params']]
    opt2 = make(p2)
    opt2.load_state_dict(ck['opt'])
    a = _run(opt1, p1, grads[10:])
    b = _run(opt2, p2, grads[10:])
    for x, y in zip(a, b): torch.testing.assert_close(x, y, rtol=0, atol=0)
    # a fresh optimizer (no loaded state) would have diverged: the state matters
    p3 = [p.clone().requires_grad_() for p in ck['params']]
    c = _run(make(p3), p3, grads[10:])
    if type(opt1) is not SGD:  # plain SGD has no state
        assert not torch.allclose(a[0], c[0])


def _onecycle_trace(opt, n=40, **kw):
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=n, **kw)
    out = []
    for i in range(n):
        pg = opt.param_groups[0]
        out += [pg['lr'], pg['betas'][0] if 'betas' in pg else pg.get('momentum', 0.)]
        opt.step()
        if i < n - 1: sched.step()
    return out


def test_onecycle_drives_our_optimizers_like_torchs():
    w = [torch.zeros(2, requires_grad=True)]
    assert _onecycle_trace(Adam(w, lr=0.01)) == pytest.approx(_onecycle_trace(torch.optim.AdamW(w, lr=0.01, betas=(0.9, 0.99))))
    ours = _onecycle_trace(Momentum(w, lr=0.01, mom=0.9))
    ref = _onecycle_trace(torch.optim.SGD(w, lr=0.01, momentum=0.9))
    assert ours == pytest.approx(ref)
    assert min(ours[1::2]) == pytest.approx(0.85)  # momentum really cycled
    lrs = _onecycle_trace(RMSProp(w, lr=0.01), cycle_momentum=False)[::2]
    assert max(lrs) == pytest.approx(0.1, rel=1e-2) and lrs[-1] < 1e-5


@pytest.mark.parametrize("make,match", [
    (lambda ps: SGD(ps, lr=-1.), "lr must be in"),
    (lambda ps: SGD(ps, lr=0.1, wd=-0.1), "wd must be in"),
    (lambda ps: Momentum(ps, lr=0.1, mom=1.), "mom must be in"),
    (lambda ps: RMSProp(ps, lr=0.1, eps=0.), "eps must be in"),
    (lambda ps: Adam(ps, lr=0.1, beta2=1.5), "beta2 must be in"),
    (lambda ps: Adam(ps, lr=float('nan')), "lr must be in")])
def test_bad_hyperparameters_value_error(make, match):
    with pytest.raises(ValueError, match=match): make([torch.zeros(1, requires_grad=True)])


def test_bad_hyperparameter_type_error():
    with pytest.raises(TypeError, match="lr must be a real number"): SGD([torch.zeros(1, requires_grad=True)], lr="0.1")
    with pytest.raises(TypeError, match="sparse"):
        e = nn.Embedding(4, 2, sparse=True)
        opt = SGD(e.parameters(), lr=0.1)
        e(torch.tensor([1])).sum().backward()
        opt.step()


# ---- schedule callbacks on a Learner ----
from functools import partial
from miniai.datasets import DataLoaders
from miniai.learner import Learner, TrainCB, Callback


def _learn(cbs, opt_func=SGD, lr=0.1, n_train=3, n_valid=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    mk = lambda n: [(torch.randn(4, 3, generator=g, dtype=dtype), torch.randn(4, 1, generator=g, dtype=dtype)) for _ in range(n)]
    torch.manual_seed(0)
    return Learner(nn.Linear(3, 1).to(dtype), DataLoaders(mk(n_train), mk(n_valid)), F.mse_loss, lr=lr,
                   cbs=[TrainCB()] + cbs, opt_func=opt_func)


def test_batch_sched_cb_steps_once_per_training_batch():
    rec = RecorderCB(lr=lambda cb: cb.pg['lr'])
    cb = BatchSchedCB(partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda i: i + 1))
    _learn([cb, rec]).fit(2)
    assert cb.schedo.last_epoch == 6                  # 3 training batches x 2 epochs, none in validation
    # the recorder sees the lr each batch trained with (before the scheduler's step)
    assert rec.recs['lr'] == pytest.approx([0.1*k for k in range(1, 7)])


def test_epoch_sched_cb_steps_once_per_training_epoch():
    seen = []
    class LrAtEpoch(Callback):
        def before_epoch(self, learn):
            if learn.training: seen.append(learn.opt.param_groups[0]['lr'])
    cb = EpochSchedCB(partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    _learn([cb, LrAtEpoch()]).fit(3)
    assert cb.schedo.last_epoch == 3
    assert seen == pytest.approx([0.1, 0.05, 0.025])


def test_has_learn_cb_and_recorder_plot():
    import matplotlib
    matplotlib.use('Agg')
    h = HasLearnCB()
    class Check(Callback):
        def after_batch(self, learn): assert h.learn is learn
    rec = RecorderCB(lr=lambda cb: cb.pg['lr'], loss=lambda cb: cb.learn.loss.item())
    _learn([h, Check(), rec]).fit(1)
    assert h.learn is None and len(rec.recs['loss']) == 3
    assert len(rec.plot()) == 2


def test_sched_callbacks_bad_input():
    with pytest.raises(TypeError, match="sched must be callable"): BatchSchedCB(0.1)
    with pytest.raises(TypeError, match="getter 'lr' must be callable"): RecorderCB(lr='lr')


def test_adam_as_learner_opt_func_matches_manual_adamw_loop():
    "Our Adam as the Learner's opt_func, with OneCycleLR through BatchSchedCB, against torch AdamW in a hand loop (float64)."
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=6)
    learn = _learn([BatchSchedCB(sched)], opt_func=partial(Adam, wd=0.01), dtype=torch.float64)
    learn.fit(2)
    ref = _learn([], dtype=torch.float64)
    opt = torch.optim.AdamW(ref.model.parameters(), lr=0.1, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-5)
    s = sched(opt)
    for _ in range(2):
        for xb, yb in ref.dls.train:
            F.mse_loss(ref.model(xb), yb).backward()
            opt.step(); opt.zero_grad(); s.step()
    for a, b in zip(learn.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_checkpoint_resume_with_our_adam_and_onecycle(tmp_path):
    "An interrupted fit resumed from Learner checkpoints (our Adam's state + the OneCycleLR in BatchSchedCB) ends like an uninterrupted one."
    from miniai.learner import CheckpointCB, CancelFitException
    class StopAtEpoch1(Callback):
        def before_epoch(self, learn):
            if learn.epoch == 1: raise CancelFitException()
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=6)
    def make(extra):
        return _learn([BatchSchedCB(sched), *extra], opt_func=partial(Adam, wd=0.01), dtype=torch.float64)
    full = make([])
    full.fit(2)
    path = tmp_path/'ck.pt'
    make([CheckpointCB(path), StopAtEpoch1()]).fit(2)
    resumed = make([CheckpointCB(path)])
    with torch.no_grad():   # different start weights: only the checkpoint can bring it back
        for p in resumed.model.parameters(): p.add_(1.)
    resumed.fit(2, resume_from=path)
    assert list(resumed.epochs) == [1]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---- parameter groups: nothing silently ignored ----

def test_group_constructor_names_apply_like_torchs():
    "A group saying `wd` (Adam's constructor name) gets that weight decay: the same steps as AdamW with weight_decay in the group."
    grads = _grads(8)
    p1, p2 = _params(8), _params(8)
    ours = _run(Adam([{'params': p1[:2], 'wd': 0.5, 'beta1': 0.8}, {'params': p1[2:]}], lr=1e-2), p1, grads)
    ref = _run(torch.optim.AdamW([{'params': p2[:2], 'weight_decay': 0.5, 'betas': (0.8, 0.99)}, {'params': p2[2:]}],
                                 lr=1e-2, weight_decay=0., betas=(0.9, 0.99), eps=1e-5), p2, grads)
    for a, b in zip(ours, ref): torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    p3 = _params(8)
    no_wd = _run(Adam([{'params': p3[:2]}, {'params': p3[2:]}], lr=1e-2, beta1=0.8), p3, grads)
    assert not torch.allclose(ours[0], no_wd[0])  # the decay really acted


def test_group_mom_and_wd_for_momentum_sgd():
    grads = _grads(9, 10)
    params = _params(9)
    start = [p.detach().clone() for p in params]
    ours = _run(Momentum([{'params': params[:1], 'mom': 0.5, 'wd': 0.2}, {'params': params[1:]}], lr=0.05), params, grads)
    torch.testing.assert_close(ours[0], _momentum_by_hand(start[0], [g[0] for g in grads], 0.05, 0.2, 0.5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], _momentum_by_hand(start[1], [g[1] for g in grads], 0.05, 0., 0.9), rtol=1e-12, atol=1e-12)
    p1, p2 = _params(9), _params(9)
    a = _run(SGD([{'params': p1, 'wd': 0.1}], lr=0.1), p1, grads)
    b = _run(torch.optim.SGD(p2, lr=0.1, weight_decay=0.1), p2, grads)
    for x, y in zip(a, b): torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("make,match", [
    (lambda ps: SGD([{'params': ps, 'momentum': 0.9}], lr=0.1), r"SGD param group 0: unknown key\(s\) \['momentum'\]"),
    (lambda ps: Adam([{'params': ps, 'weight_decy': 0.1}], lr=0.1), r"Adam param group 0: unknown key\(s\) \['weight_decy'\]"),
    (lambda ps: RMSProp([{'params': ps, 'mom': 0.9}], lr=0.1), r"RMSProp param group 0: unknown key\(s\) \['mom'\]"),
    (lambda ps: Adam([{'params': ps[:1]}, {'params': ps[1:], 'lr': -1e-3}], lr=0.1), r"Adam param group 1: lr must be in"),
    (lambda ps: SGD([{'params': ps, 'wd': float('nan')}], lr=0.1), r"SGD param group 0: weight_decay must be in .*nan"),
    (lambda ps: SGD([{'params': ps, 'lr': float('inf')}], lr=0.1), r"SGD param group 0: lr must be in"),
    (lambda ps: Momentum([{'params': ps, 'mom': 1.2}], lr=0.1), r"Momentum param group 0: momentum must be in \[0.0, 1.0\)"),
    (lambda ps: RMSProp([{'params': ps, 'eps': 0.}], lr=0.1), r"RMSProp param group 0: eps must be in \(0.0, inf\)"),
    (lambda ps: Adam([{'params': ps, 'betas': (0.9, -0.1)}], lr=0.1), r"Adam param group 0: betas \(beta2\) must be in"),
    (lambda ps: Adam([{'params': ps, 'betas': 0.9}], lr=0.1), r"Adam param group 0: betas must be a pair"),
    (lambda ps: Adam([{'params': ps, 'wd': 0.1, 'weight_decay': 0.2}], lr=0.1), r"both 'wd' and 'weight_decay'"),
    (lambda ps: Adam([{'params': ps, 'beta1': 0.8, 'betas': (0.9, 0.9)}], lr=0.1), r"both 'betas' and 'beta1'/'beta2'"),
])
def test_bad_param_groups_value_error(make, match):
    with pytest.raises(ValueError, match=match): make([torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)])


def test_add_param_group_is_checked_too():
    opt = Momentum([torch.zeros(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"Momentum param group 1: unknown key\(s\) \['betas'\]"):
        opt.add_param_group({'params': [torch.zeros(1, requires_grad=True)], 'betas': (0.9, 0.99)})
    with pytest.raises(ValueError, match=r"param group 1: lr must be in"):
        opt.add_param_group({'params': [torch.zeros(1, requires_grad=True)], 'lr': -0.1})
    assert len(opt.param_groups) == 1   # a refused group is not half-added
    opt.add_param_group({'params': [torch.zeros(1, requires_grad=True)], 'mom': 0.5})
    assert opt.param_groups[1]['momentum'] == 0.5 and opt.param_groups[1]['lr'] == 0.1


@pytest.mark.parametrize("key,value,match", [('lr', float('nan'), 'lr must be in'), ('lr', -0.1, 'lr must be in'),
                                             ('weight_decay', -1., 'weight_decay must be in'), ('wd', 0.1, r"unknown key\(s\) \['wd'\]"),
                                             ('betas', (0.9, float('nan')), r'betas \(beta2\) must be in')])
def test_step_checks_groups_changed_after_construction(key, value, match):
    "A scheduler or a hand edit that breaks a group is caught at the next step, before any parameter changes."
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = Adam([w], lr=0.1)
    opt.param_groups[0][key] = value
    w.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Adam param group 0: " + match): opt.step()
    assert (w == 1).all()


def _step_with(opt, sched, n=6, metric=False):
    w = opt.param_groups[0]['params'][0]
    lrs = []
    for _ in range(n):
        w.grad = torch.ones_like(w)
        opt.step()
        sched.step(1.) if metric else sched.step()
        lrs.append(opt.param_groups[0]['lr'])
    return lrs


@pytest.mark.parametrize("opt_cls", [SGD, Momentum, RMSProp, Adam])
@pytest.mark.parametrize("sched", ['onecycle', 'cyclic', 'step', 'cosine_restarts', 'plateau', 'swalr'])
def test_torch_schedulers_keep_working(opt_cls, sched):
    from torch.optim import lr_scheduler as S
    from torch.optim.swa_utils import SWALR
    opt = opt_cls([torch.zeros(2, requires_grad=True)], lr=0.01)
    has_mom = opt_cls in (Momentum, Adam)
    make = {'onecycle': lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, cycle_momentum=has_mom),
            'cyclic': lambda o: S.CyclicLR(o, base_lr=0.001, max_lr=0.1, step_size_up=2, cycle_momentum=has_mom),
            'step': lambda o: S.StepLR(o, 2, 0.5), 'cosine_restarts': lambda o: S.CosineAnnealingWarmRestarts(o, 3),
            'plateau': lambda o: S.ReduceLROnPlateau(o, patience=0), 'swalr': lambda o: SWALR(o, swa_lr=0.05, anneal_epochs=3)}[sched]
    s = make(opt)
    lrs = _step_with(opt, s, metric=sched == 'plateau')
    assert len(set(lrs)) > 1 and all(math.isfinite(v) and v >= 0 for v in lrs)
    # and a state_dict round trip keeps the scheduler's keys
    opt2 = opt_cls([torch.zeros(2, requires_grad=True)], lr=0.01)
    opt2.load_state_dict(opt.state_dict())
    opt2.param_groups[0]['params'][0].grad = torch.ones(2)
    opt2.step()


def test_recorder_follows_param_groups_replaced_by_a_checkpoint_load(tmp_path):
    "Resuming from a checkpoint replaces the optimizer's param groups; RecorderCB must record the live ones, not the discarded dicts."
    from miniai.learner import CheckpointCB, CancelFitException
    class StopAtEpoch1(Callback):
        def before_epoch(self, learn):
            if learn.epoch == 1: raise CancelFitException()
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=6)
    def make(extra):
        return _learn([BatchSchedCB(sched), *extra], opt_func=partial(Adam, wd=0.01), dtype=torch.float64)
    full = RecorderCB(lr=lambda cb: cb.pg['lr'])
    make([full]).fit(2)
    make([CheckpointCB(tmp_path/'ck.pt'), StopAtEpoch1()]).fit(2)
    resumed = RecorderCB(lr=lambda cb: cb.pg['lr'])
    make([CheckpointCB(tmp_path/'ck.pt'), resumed]).fit(2, resume_from=tmp_path/'ck.pt')
    assert resumed.recs['lr'] == pytest.approx(full.recs['lr'][3:])   # the second epoch's three batches
