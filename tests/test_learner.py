"Tests for miniai.learner: event order, cancellation, callback errors, metrics, checkpoints/resume, NaN stop, LR finder, Ctrl-C."
import math
import os

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from miniai.learner import (Accuracy, CancelBatchException, CancelEpochException, CancelFitException, Callback, CheckpointCB,
                            DeviceCB, Learner, LRFinderCB, Mean, MetricsCB, MomentumLearner, ProgressCB, SingleBatchCB,
                            TrainCB, TrainLearner, lr_find, run_cbs, to_cpu, with_cbs)


class DLs:
    def __init__(self, train, valid): self.train, self.valid = train, valid


def make_dls(n_train=48, n_valid=32, bs=16, seed=0, shuffle=True):
    "Synthetic 10-class data; the training loader shuffles with its own seeded generator."
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 6, generator=g) * 2
    n = n_train + n_valid
    y = torch.randint(0, 4, (n,), generator=g)
    x = centres[y] + torch.randn(n, 6, generator=g)
    tr = DataLoader(TensorDataset(x[:n_train], y[:n_train]), bs, shuffle=shuffle,
                    generator=torch.Generator().manual_seed(seed + 1))
    va = DataLoader(TensorDataset(x[n_train:], y[n_train:]), bs)
    return DLs(tr, va)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 4))


EVENTS = ['before_fit', 'after_fit', 'cleanup_fit', 'before_epoch', 'after_epoch', 'cleanup_epoch', 'before_batch',
          'after_batch', 'cleanup_batch', 'after_predict', 'after_loss', 'after_backward', 'after_step']


class Recorder(Callback):
    "Records every event as (name, training) and optionally raises `exc` at event `at` when `when(learn)`."
    def __init__(self, at=None, exc=None, when=lambda learn: True):
        self.events, self.at, self.exc, self.when = [], at, exc, when
        for e in EVENTS: setattr(self, e, self._mk(e))

    def _mk(self, e):
        def f(learn):
            self.events.append(e)
            if e == self.at and self.when(learn): raise self.exc
        return f


def batch_events(training):
    core = ['before_batch', 'after_predict', 'after_loss']
    if training: core += ['after_backward', 'after_step']
    return core + ['after_batch', 'cleanup_batch']


def test_event_order_fit1():
    rec = Recorder()
    learn = Learner(make_model(), make_dls(48, 32, 16), F.cross_entropy, cbs=[TrainCB(), rec])
    learn.fit(1)
    exp = ['before_fit', 'before_epoch'] + batch_events(True) * 3 + ['after_epoch', 'cleanup_epoch']
    exp += ['before_epoch'] + batch_events(False) * 2 + ['after_epoch', 'cleanup_epoch', 'after_fit', 'cleanup_fit']
    assert rec.events == exp
    assert rec.events.count('before_epoch') == 2


def test_order_attribute_sorts_callbacks():
    calls = []
    class A(Callback):
        order = 2
        def before_fit(self, learn): calls.append('A')
    class B(Callback):
        order = -1
        def before_fit(self, learn): calls.append('B')
    run_cbs([A(), B(), SingleBatchCB()], 'before_fit')
    assert calls == ['B', 'A']


def test_cancel_batch():
    # cancel the first training batch after predict: no loss/backward/step for it, but after_batch and cleanup_batch run
    rec = Recorder('after_predict', CancelBatchException(), when=lambda l: l.training and l.iter == 0)
    learn = Learner(make_model(), make_dls(32, 16, 16), F.cross_entropy, cbs=[TrainCB(), rec])
    learn.fit(1, valid=False)
    first = rec.events[2:rec.events.index('before_batch', 3)]
    assert first == ['before_batch', 'after_predict', 'after_batch', 'cleanup_batch']
    assert rec.events[-4:] == ['after_epoch', 'cleanup_epoch', 'after_fit', 'cleanup_fit']


def test_cancel_epoch_and_fit():
    rec = Recorder('before_batch', CancelEpochException(), when=lambda l: l.training and l.iter == 1)
    learn = Learner(make_model(), make_dls(48, 16, 16), F.cross_entropy, cbs=[TrainCB(), rec])
    learn.fit(1)
    ev = rec.events
    i = ev.index('cleanup_epoch')
    # training epoch: batch 0 complete, batch 1 cancelled in before_batch (a CancelEpochException passes the batch
    # stage: no after_batch), then the epoch ends with after_epoch and cleanup_epoch
    assert ev[:i + 1] == ['before_fit', 'before_epoch'] + batch_events(True) + ['before_batch', 'cleanup_batch',
                                                                               'after_epoch', 'cleanup_epoch']
    assert ev[i + 1:] == ['before_epoch'] + batch_events(False) + ['after_epoch', 'cleanup_epoch', 'after_fit', 'cleanup_fit']

    # CancelFitException in the first after_batch: the fit ends with after_fit, no after_epoch, no later batch
    rec = Recorder('after_batch', CancelFitException(), when=lambda l: l.iter == 0)
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), rec])
    learn.fit(3)
    assert rec.events == ['before_fit', 'before_epoch'] + batch_events(True) + ['cleanup_epoch', 'after_fit', 'cleanup_fit']


def test_cancel_in_after_event_does_not_rerun_it():
    # a stage's own cancel raised by its after_ event ends the stage: after_ is not called a second time
    for stage, exc in (('batch', CancelBatchException()), ('epoch', CancelEpochException()), ('fit', CancelFitException())):
        rec = Recorder(f'after_{stage}', exc)
        Learner(make_model(), make_dls(32, 16, 16), F.cross_entropy, cbs=[TrainCB(), rec]).fit(2)
        n_batches, n_epochs = 2*(2 + 1), 2*2   # per epoch: 2 train + 1 valid batches; 2 passes per epoch
        exp = {'batch': n_batches, 'epoch': n_epochs, 'fit': 1}[stage]
        assert rec.events.count(f'after_{stage}') == exp, stage
        assert rec.events.count(f'cleanup_{stage}') == exp, stage


def test_cancelled_batch_skipped_by_metrics():
    # a batch cancelled before its loss leaves preds/loss None; MetricsCB counts only the finished batches
    class SkipFirst(Callback):
        def before_batch(self, learn):
            if learn.iter == 0: raise CancelBatchException()
    metrics = MetricsCB(accuracy=Accuracy())
    logs = []
    metrics._log = logs.append
    learn = Learner(make_model(), make_dls(48, 32, 16), F.cross_entropy, cbs=[TrainCB(), metrics, SkipFirst()])
    learn.fit(1)
    assert [d['train'] for d in logs] == ['train', 'eval']
    assert metrics.all_metrics['accuracy'].total == 16   # the valid pass: 2 batches of 16, the first skipped
    assert metrics.loss.weight == 16


def test_empty_epoch_is_not_logged():
    # an epoch cancelled at its start has no batches: MetricsCB logs nothing for it (no row of nans)
    class SkipValid(Callback):
        def before_epoch(self, learn):
            if not learn.training: raise CancelEpochException()
    metrics = MetricsCB(accuracy=Accuracy())
    logs = []
    metrics._log = logs.append
    Learner(make_model(), make_dls(32, 16, 16), F.cross_entropy, cbs=[TrainCB(), metrics, SkipValid()]).fit(2)
    assert [d['train'] for d in logs] == ['train', 'train']


def test_single_batch_cb():
    rec = Recorder()
    Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), rec, SingleBatchCB()]).fit(5)
    assert rec.events.count('before_batch') == 1


def test_callback_error_names_callback_and_event():
    class Boom(Callback):
        def after_loss(self, learn): raise ValueError('bad value')
    rec = Recorder()
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), Boom(), rec])
    with pytest.raises(ValueError, match=r"Boom\.after_loss: bad value") as ei:
        learn.fit(1)
    assert type(ei.value.__cause__) is ValueError and str(ei.value.__cause__) == 'bad value'
    assert rec.events[-3:] == ['cleanup_batch', 'cleanup_epoch', 'cleanup_fit']

    class Odd(Exception):
        def __init__(self, a, b): super().__init__(a, b)
    class Boom2(Callback):
        def before_fit(self, learn): raise Odd(1, 2)
    with pytest.raises(RuntimeError, match=r"Boom2\.before_fit: Odd") as ei:
        Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), Boom2()]).fit(1)
    assert isinstance(ei.value.__cause__, Odd)

    # an error in the model is reported with the step that ran it
    bad = Learner(nn.Linear(5, 4), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    with pytest.raises(RuntimeError, match=r"TrainCB\.predict"):
        bad.fit(1)


def test_temp_callbacks_removed_even_on_error():
    class Boom(Callback):
        def before_fit(self, learn): raise KeyError('x')
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    with pytest.raises(KeyError):
        learn.fit(1, cbs=Boom())
    assert len(learn.cbs) == 1


def _valid_reference(model, dl):
    model.eval()
    with torch.no_grad():
        xs, ys = zip(*dl)
        preds = model(torch.cat(xs))
        y = torch.cat(ys)
    return (preds.argmax(1) == y).double().mean().item(), F.cross_entropy(preds, y).item()


class HandAcc:
    def reset(self): self.c, self.n = 0, 0
    def update(self, p, t): self.c += (p.argmax(1) == t).sum().item(); self.n += len(t)
    def compute(self): return self.c / self.n


@pytest.mark.filterwarnings('ignore:.*torch.jit.script:FutureWarning')   # raised inside torcheval
def test_metrics_cb_torcheval_and_hand_written(capsys):
    from torcheval.metrics import MulticlassAccuracy
    dls = make_dls()
    m = MetricsCB(MulticlassAccuracy(), hand=HandAcc())
    learn = Learner(make_model(), dls, F.cross_entropy, lr=0.3, cbs=[TrainCB(), DeviceCB('cpu'), m])
    learn.fit(2)
    acc, loss = _valid_reference(learn.model, dls.valid)
    assert m.all_metrics['MulticlassAccuracy'].compute().item() == pytest.approx(acc, abs=1e-6)
    assert m.all_metrics['hand'].compute() == pytest.approx(acc, abs=1e-12)
    assert m.loss.compute().item() == pytest.approx(loss, rel=1e-5)   # batch-size weighted mean = full mean
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "'train': 'eval'" in lines[-1] and "'epoch': 1" in lines[-1]
    with pytest.raises(TypeError, match=r"metric 'acc'.*update"):
        MetricsCB(acc=lambda p, t: 0)


@pytest.mark.filterwarnings('ignore:.*torch.jit.script:FutureWarning')
def test_mean_matches_torcheval():
    from torcheval.metrics import Mean as TEMean
    a, b = Mean(), TEMean()
    g = torch.Generator().manual_seed(3)
    for w in (1., 3., 0.5):
        x = torch.rand(5, generator=g)
        a.update(x, weight=w); b.update(x, weight=w)
    assert a.compute().item() == pytest.approx(b.compute().item(), rel=1e-6)
    a.reset()
    assert math.isnan(a.compute().item())


def test_to_cpu():
    x = {'a': [torch.ones(2, dtype=torch.float16, requires_grad=False), (torch.zeros(1, requires_grad=True), 3)]}
    r = to_cpu(x)
    assert r['a'][0].dtype == torch.float32 and not r['a'][1][0].requires_grad and r['a'][1][1] == 3
    assert isinstance(r['a'][1], tuple)


def test_train_learner_equals_traincb():
    dls = make_dls(shuffle=False)
    a = TrainLearner(make_model(), dls, F.cross_entropy, lr=0.2)
    b = Learner(make_model(), dls, F.cross_entropy, lr=0.2, cbs=[TrainCB()])
    torch.manual_seed(5); a.fit(2)
    torch.manual_seed(5); b.fit(2)
    for p, q in zip(a.model.parameters(), b.model.parameters()): torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_momentum_learner_matches_torch_sgd_dampened():
    # grads g_t accumulate as m_t = mom*m_{t-1} + g_t, step p -= lr*m_t: torch SGD(momentum=mom, dampening=0)
    dls = make_dls(shuffle=False)
    model = nn.Sequential(nn.Linear(6, 4)).double()
    ref = nn.Sequential(nn.Linear(6, 4)).double()
    ref.load_state_dict(model.state_dict())
    dls.train = [(x.double(), y) for x, y in dls.train]
    MomentumLearner(model, dls, F.cross_entropy, lr=0.1, mom=0.85).fit(2, valid=False)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.85)
    for _ in range(2):
        for x, y in dls.train:
            F.cross_entropy(ref(x), y).backward(); opt.step(); opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()): torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_missing_train_step_and_bad_inputs():
    with pytest.raises(AttributeError, match="TrainCB"):
        Learner(make_model(), make_dls(), F.cross_entropy).fit(1)
    with pytest.raises(TypeError, match="model must be callable"):
        Learner(3, make_dls())
    with pytest.raises(ValueError, match="lr must be"):
        Learner(make_model(), make_dls(), lr=-1)
    with pytest.raises(ValueError, match="n_epochs"):
        Learner(make_model(), make_dls(), cbs=[TrainCB()]).fit(1.5)
    with pytest.raises(TypeError, match=r"dls must have \.train"):
        Learner(make_model(), cbs=[TrainCB()]).fit(1)
    with pytest.raises(ValueError, match="stage"):
        with_cbs('step')
    with pytest.raises(ValueError, match="every"):
        CheckpointCB('x.pt', every=0)


def test_save_load_round_trip(tmp_path):
    dls = make_dls()
    learn = Learner(make_model(), dls, F.cross_entropy, lr=0.1, opt_func=torch.optim.Adam, cbs=[TrainCB()])
    learn.fit(2)
    path = tmp_path / 'sub' / 'ck.pt'
    learn.save(path)
    assert os.listdir(path.parent) == ['ck.pt']           # no temporary file left behind
    other = Learner(make_model(seed=9), dls, F.cross_entropy, lr=0.1, opt_func=torch.optim.Adam, cbs=[TrainCB()])
    state = other.load(path)
    assert state['epoch'] == 2 and other.epochs_done == 2
    for p, q in zip(learn.model.state_dict().values(), other.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # no optimizer yet: its state is applied when the next fit creates one
    other.fit(0)
    sa, sb = learn.opt.state_dict(), other.opt.state_dict()
    for k in sa['state']:
        for n in ('exp_avg', 'exp_avg_sq', 'step'):
            torch.testing.assert_close(sa['state'][k][n], sb['state'][k][n], rtol=0, atol=0)

    torch.save({'not': 'a checkpoint'}, tmp_path / 'bad.pt')
    with pytest.raises(ValueError, match="not a Learner checkpoint"):
        other.load(tmp_path / 'bad.pt')
    # arbitrary pickled objects are refused (weights_only=True)
    torch.save({'model': HandAcc()}, tmp_path / 'evil.pt')
    with pytest.raises(Exception, match="[Ww]eights.only"):
        other.load(tmp_path / 'evil.pt')


class StepSchedCB(Callback):
    "A callback holding a torch LR scheduler (stepped per epoch), to check its state is checkpointed."
    def before_fit(self, learn): self.sched = torch.optim.lr_scheduler.StepLR(learn.opt, step_size=3, gamma=0.5)
    def after_epoch(self, learn):
        if learn.training: self.sched.step()


class Crash(Callback):
    def __init__(self, epoch, it, exc): self.epoch, self.it, self.exc = epoch, it, exc
    def before_batch(self, learn):
        if learn.epoch == self.epoch and learn.iter == self.it: raise self.exc


@pytest.mark.parametrize('kind', ['momentum_learner', 'sgd_sched_dropout', 'miniai_adam_onecycle'])
def test_checkpoint_resume_equals_uninterrupted(tmp_path, kind):
    def run(path, extra=(), n=4):
        torch.manual_seed(123)   # global RNG (dropout) changes between runs unless restored
        model = make_model(seed=1)
        if kind == 'momentum_learner':
            learn = MomentumLearner(model, make_dls(), F.cross_entropy, lr=0.1, cbs=[CheckpointCB(path), *extra])
        elif kind == 'miniai_adam_onecycle':   # the optimizer and scheduler callback of miniai.sgd
            from functools import partial
            from miniai.sgd import Adam, BatchSchedCB
            sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=n * 3)
            learn = Learner(model, make_dls(), F.cross_entropy, lr=0.05, opt_func=Adam,
                            cbs=[TrainCB(), BatchSchedCB(sched), CheckpointCB(path), *extra])
        else:
            opt = lambda ps, lr: torch.optim.SGD(ps, lr, momentum=0.9)
            learn = Learner(model, make_dls(), F.cross_entropy, lr=0.2, opt_func=opt,
                            cbs=[TrainCB(), StepSchedCB(), CheckpointCB(path), *extra])
        learn.fit(n)
        return learn

    full = run(tmp_path / 'full.pt')
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / 'part.pt', [Crash(2, 1, RuntimeError('crash'))])
    assert torch.load(tmp_path / 'part.pt', weights_only=True)['epoch'] == 2
    resumed = run(tmp_path / 'part.pt')
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    if kind != 'momentum_learner':
        assert resumed.opt.param_groups[0]['lr'] == pytest.approx(full.opt.param_groups[0]['lr'])
    # without the checkpoint the restarted run would differ
    fresh = run(tmp_path / 'other.pt', n=2)
    assert not all(torch.equal(p, q) for p, q in zip(full.model.parameters(), fresh.model.parameters()))


def test_checkpoint_every(tmp_path):
    saved = []
    class Spy(CheckpointCB):
        def after_epoch(self, learn):
            super().after_epoch(learn)
            if os.path.exists(self.path): saved.append(torch.load(self.path, weights_only=True)['epoch'])
    Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), Spy(tmp_path / 'c.pt', every=2)]).fit(3)
    assert sorted(set(saved)) == [2, 3]


@pytest.mark.parametrize('bad', [math.nan, math.inf])
def test_nonfinite_loss_stops_with_epoch_and_batch(bad):
    class Poison(Callback):
        def after_loss(self, learn):
            if learn.epoch == 1 and learn.iter == 2: learn.loss = learn.loss * bad
    rec = Recorder()
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), Poison(), rec])
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at epoch 1, training batch 2"):
        learn.fit(3)
    assert rec.events[-1] == 'cleanup_fit'
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    learn.check_finite = False
    learn.fit(1, cbs=[])   # the check can be turned off; the poison would now be silently trained on (epoch 1 not reached)


def test_keyboard_interrupt_ends_fit_cleanly(capsys):
    rec = Recorder('after_backward', KeyboardInterrupt(), when=lambda l: l.epoch == 1 and l.iter == 1)
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), rec])
    learn.fit(3)   # returns normally
    assert learn.interrupted and learn.epochs_done == 1
    assert rec.events[-3:] == ['cleanup_batch', 'cleanup_epoch', 'cleanup_fit'] and 'after_fit' not in rec.events
    assert all(p.grad is None for p in learn.model.parameters())   # half-done gradients cleared
    err = capsys.readouterr().err
    assert 'interrupted' in err and 'epoch 1, batch 1' in err and 'Traceback' not in err
    rec.at = None
    learn.fit(1)   # still usable
    assert not learn.interrupted
    # Ctrl-C in before_fit is handled the same way
    rec = Recorder('before_fit', KeyboardInterrupt())
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), rec])
    learn.fit(1)
    assert learn.interrupted and rec.events == ['before_fit', 'cleanup_fit']


def test_lr_finder_cb():
    torch.manual_seed(0)
    cb = LRFinderCB(gamma=1.3, max_mult=3)
    learn = Learner(make_model(), make_dls(480, 16, 8), F.cross_entropy, lr=1e-4, cbs=[TrainCB()])
    learn.fit(20, valid=False, cbs=cb)
    lrs = torch.tensor(cb.lrs, dtype=torch.float64)
    torch.testing.assert_close(lrs[1:] / lrs[:-1], torch.full_like(lrs[1:], 1.3), rtol=1e-9, atol=0)
    assert lrs[0].item() == pytest.approx(1e-4)
    # it stopped at the first loss above max_mult x the running minimum (or a non-finite one)
    mins = torch.tensor(cb.losses).cummin(0).values
    assert all(l <= 3 * m for l, m in zip(cb.losses[:-1], mins[:-1]))
    assert len(cb.losses) < 20 * 60
    with pytest.raises(ValueError, match="gamma"):
        LRFinderCB(gamma=0.9)


def test_lr_find_returns_suggestion_and_restores():
    import matplotlib
    matplotlib.use('Agg')
    learn = Learner(make_model(), make_dls(480, 16, 8), F.cross_entropy, cbs=[TrainCB()])
    before = [p.detach().clone() for p in learn.model.parameters()]
    lr = learn.lr_find()
    cb = learn.lr_finder
    i = min(range(len(cb.losses)), key=cb.losses.__getitem__)
    assert lr == pytest.approx(cb.lrs[i] / 10)
    for p, q in zip(before, learn.model.parameters()): assert torch.equal(p, q)
    assert lr_find(learn, plot=False) > 0


def test_progress_cb_plain_lines(capsys):
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), MetricsCB(acc=HandAcc())])
    learn.fit(2, cbs=ProgressCB())
    out = capsys.readouterr().out
    assert '\r' not in out
    lines = out.strip().splitlines()
    assert lines[0].split() == ['acc', 'loss', 'epoch', 'train', 'time'] and len(lines) == 5
    assert lines[-1].split()[2:4] == ['1', 'eval']
    # the metrics callback logs as before once the progress callback has gone
    learn.fit(1)
    assert capsys.readouterr().out.startswith('{')


def test_failed_save_keeps_last_checkpoint(tmp_path, monkeypatch):
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    path = tmp_path / 'ck.pt'
    learn.save(path)
    good = path.read_bytes()
    def broken_save(obj, f):
        f.write(b'half a checkpoint')
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        learn.save(path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ['ck.pt']


def test_accuracy_metric_matches_torcheval():
    from torcheval.metrics import MulticlassAccuracy
    from miniai.learner import Accuracy
    ours, ref = Accuracy(), MulticlassAccuracy()
    for _ in range(3):
        p, t = torch.randn(37, 5), torch.randint(0, 5, (37,))
        ours.update(p, t); ref.update(p, t)
    assert abs(float(ours.compute()) - float(ref.compute())) < 1e-6
    ours.reset()
    assert torch.isnan(ours.compute())
    with pytest.raises(ValueError, match=r"preds \(N, C\) and targets \(N,\)"): ours.update(torch.randn(4), torch.zeros(4))
