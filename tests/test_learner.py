"Tests for miniai.learner: event order, cancellation, callback errors, the logging channel, the kept optimizer, metrics, NaN stop, LR finder, Ctrl-C."
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from miniai.learner import (EVENT_ORDER, Accuracy, CancelBatchException, CancelEpochException, CancelFitException, Callback,
                            CheckpointCB, CSVLogger, DeviceCB, Learner, LRFinderCB, Mean, MetricsCB, MomentumLearner,
                            ProgressCB, SingleBatchCB, SuggestedLRs, TrainCB, TrainLearner, lr_find, run_cbs, suggest_lrs,
                            to_cpu, with_cbs)


class DLs:
    def __init__(self, train, valid): self.train, self.valid = train, valid


def make_dls(n_train=48, n_valid=32, bs=16, seed=0, shuffle=True):
    "Synthetic 4-class data; the training loader shuffles with its own seeded generator."
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


EVENTS = ['before_fit', 'after_fit', 'cleanup_fit', 'before_full_epoch', 'after_full_epoch', 'cleanup_full_epoch',
          'before_train', 'after_train', 'before_validate', 'after_validate', 'before_epoch', 'after_epoch', 'cleanup_epoch',
          'before_batch', 'after_batch', 'cleanup_batch', 'after_predict', 'after_loss', 'after_backward', 'after_step']


class Recorder(Callback):
    "Records every event and optionally raises `exc` at event `at` when `when(learn)`."
    order = -10
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


def pass_events(training, n_batches):
    nm = 'train' if training else 'validate'
    return [f'before_{nm}', 'before_epoch'] + batch_events(training) * n_batches + ['after_epoch', 'cleanup_epoch', f'after_{nm}']


def epoch_events(n_train, n_valid):
    return ['before_full_epoch'] + pass_events(True, n_train) + pass_events(False, n_valid) + ['after_full_epoch', 'cleanup_full_epoch']


def listing(order):
    "The events of the `EVENT_ORDER` text, in order."
    return [e.strip() for line in order.strip().splitlines() for e in line.split('(')[0].split(',') if e.strip()]


def test_event_order_matches_documented_listing():
    # EVENT_ORDER documents a fit of 1 epoch with 2 training batches and 1 validation batch
    rec = Recorder()
    Learner(make_model(), make_dls(32, 16, 16), F.cross_entropy, cbs=[TrainCB(), rec]).fit(1)
    assert rec.events == listing(EVENT_ORDER)
    assert rec.events == ['before_fit'] + epoch_events(2, 1) + ['after_fit', 'cleanup_fit']


def test_full_epoch_events_once_per_epoch_and_start_epoch():
    rec, epochs = Recorder(), []
    class E(Callback):
        def after_full_epoch(self, learn): epochs.append((learn.epoch, learn.epochs_done, learn.training))
    learn = Learner(make_model(), make_dls(32, 16, 16), F.cross_entropy, cbs=[TrainCB(), rec, E()])
    learn.fit(3)
    assert rec.events.count('after_full_epoch') == 3 and rec.events.count('after_epoch') == 6
    assert epochs == [(0, 1, False), (1, 2, False), (2, 3, False)]   # after the validation pass
    epochs.clear()
    learn.fit(5, start_epoch=3)
    assert epochs == [(3, 4, False), (4, 5, False)] and list(learn.epochs) == [3, 4]
    with pytest.raises(ValueError, match='start_epoch'): learn.fit(2, start_epoch=3)


def test_cancel_epoch_between_passes_skips_rest_of_epoch():
    rec = Recorder('after_train', CancelEpochException())
    Learner(make_model(), make_dls(32, 16, 16), F.cross_entropy, cbs=[TrainCB(), rec]).fit(2)
    one = ['before_full_epoch'] + pass_events(True, 2) + ['after_full_epoch', 'cleanup_full_epoch']
    assert rec.events == ['before_fit'] + one * 2 + ['after_fit', 'cleanup_fit']


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
    i = rec.events.index('before_batch')
    assert rec.events[i:i + 4] == ['before_batch', 'after_predict', 'after_batch', 'cleanup_batch']
    assert rec.events[-7:] == ['after_epoch', 'cleanup_epoch', 'after_train', 'after_full_epoch', 'cleanup_full_epoch',
                               'after_fit', 'cleanup_fit']


def test_cancel_epoch_and_fit():
    rec = Recorder('before_batch', CancelEpochException(), when=lambda l: l.training and l.iter == 1)
    learn = Learner(make_model(), make_dls(48, 16, 16), F.cross_entropy, cbs=[TrainCB(), rec])
    learn.fit(1)
    # training pass: batch 0 complete, batch 1 cancelled in before_batch (a CancelEpochException passes the batch
    # stage: no after_batch), then the pass ends with after_epoch and cleanup_epoch; the validation pass runs
    train = ['before_train', 'before_epoch'] + batch_events(True) + ['before_batch', 'cleanup_batch', 'after_epoch',
                                                                     'cleanup_epoch', 'after_train']
    assert rec.events == (['before_fit', 'before_full_epoch'] + train + pass_events(False, 1)
                          + ['after_full_epoch', 'cleanup_full_epoch', 'after_fit', 'cleanup_fit'])

    # CancelFitException in the first after_batch: the fit ends with after_fit, no after_epoch, no later batch
    rec = Recorder('after_batch', CancelFitException(), when=lambda l: l.iter == 0)
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), rec])
    learn.fit(3)
    assert rec.events == (['before_fit', 'before_full_epoch', 'before_train', 'before_epoch'] + batch_events(True)
                          + ['cleanup_epoch', 'cleanup_full_epoch', 'after_fit', 'cleanup_fit'])


def test_cancel_in_after_event_does_not_rerun_it():
    # a stage's own cancel raised by its after_ event ends the stage: after_ is not called a second time
    for stage, exc in (('batch', CancelBatchException()), ('epoch', CancelEpochException()), ('fit', CancelFitException()),
                       ('full_epoch', CancelEpochException())):
        rec = Recorder(f'after_{stage}', exc)
        Learner(make_model(), make_dls(32, 16, 16), F.cross_entropy, cbs=[TrainCB(), rec]).fit(2)
        exp = {'batch': 2*(2 + 1), 'epoch': 2*2, 'fit': 1, 'full_epoch': 2}[stage]
        assert rec.events.count(f'after_{stage}') == exp, stage
        assert rec.events.count(f'cleanup_{stage}') == exp, stage


def test_cancelled_batch_skipped_by_metrics():
    # a batch cancelled before its loss leaves preds/loss None; MetricsCB counts only the finished batches
    class SkipFirst(Callback):
        def before_batch(self, learn):
            if learn.iter == 0: raise CancelBatchException()
    metrics = MetricsCB(accuracy=Accuracy())
    learn = Learner(make_model(), make_dls(48, 32, 16), F.cross_entropy, cbs=[TrainCB(), metrics, SkipFirst()])
    learn.fit(1)
    assert [d['train'] for d in learn.history] == ['train', 'eval']
    assert metrics.all_metrics['accuracy'].total == 16   # the valid pass: 2 batches of 16, the first skipped
    assert metrics.loss.weight == 16


def test_empty_epoch_is_not_logged():
    # an epoch cancelled at its start has no batches: MetricsCB logs nothing for it (no row of nans)
    class SkipValid(Callback):
        def before_epoch(self, learn):
            if not learn.training: raise CancelEpochException()
    learn = Learner(make_model(), make_dls(32, 16, 16), F.cross_entropy, cbs=[TrainCB(), MetricsCB(accuracy=Accuracy()), SkipValid()])
    learn.fit(2)
    assert [d['train'] for d in learn.history] == ['train', 'train']


def test_single_batch_cb():
    rec = Recorder()
    Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), rec, SingleBatchCB()]).fit(5)
    assert rec.events.count('before_batch') == 1


# ---------------------------------------------------------------- cbs as any iterable
def test_cbs_any_iterable_including_fastcore_L():
    import fastcore.all as fc
    rec = Recorder()
    cbs = [TrainCB(), DeviceCB('cpu')]
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=cbs + fc.L([rec]))   # the course's lesson 10
    learn.fit(1, cbs=fc.L([MetricsCB()]))
    assert rec.events.count('before_fit') == 1 and len(learn.history) == 2
    assert len(learn.cbs) == 3   # the fit-only callbacks are gone
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=(TrainCB(), [MetricsCB(), [Recorder()]]))
    assert len(learn.cbs) == 3
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=TrainCB())
    assert len(learn.cbs) == 1
    with pytest.raises(TypeError, match="not an instance: pass TrainCB()"):
        Learner(make_model(), make_dls(), cbs=[TrainCB])
    with pytest.raises(TypeError, match="must hold callbacks"):
        Learner(make_model(), make_dls(), cbs=[TrainCB(), 3])


# ---------------------------------------------------------------- errors keep their type and attributes
def test_callback_error_keeps_type_and_attributes_with_a_note():
    class Boom(Callback):
        def after_loss(self, learn): open('/no/such/file/anywhere')
    rec = Recorder()
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), Boom(), rec])
    with pytest.raises(FileNotFoundError) as ei:
        learn.fit(1)
    e = ei.value
    assert type(e) is FileNotFoundError and e.errno == 2 and e.filename == '/no/such/file/anywhere'
    assert e.__notes__ == ['in callback Boom.after_loss']
    assert rec.events[-4:] == ['cleanup_batch', 'cleanup_epoch', 'cleanup_full_epoch', 'cleanup_fit']

    class Odd(Exception):
        def __init__(self, a, b): super().__init__(a, b); self.a, self.b = a, b
    err = Odd(1, 2)
    class Boom2(Callback):
        def before_fit(self, learn): raise err
    with pytest.raises(Odd) as ei:
        Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), Boom2()]).fit(1)
    assert ei.value is err and (ei.value.a, ei.value.b) == (1, 2) and ei.value.__notes__ == ['in callback Boom2.before_fit']

    # an error in the model is noted with the step that ran it, once
    bad = Learner(nn.Linear(5, 4), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    with pytest.raises(RuntimeError) as ei:
        bad.fit(1)
    assert ei.value.__notes__ == ['in callback TrainCB.predict']


def test_temp_callbacks_removed_even_on_error():
    class Boom(Callback):
        def before_fit(self, learn): raise KeyError('x')
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    with pytest.raises(KeyError):
        learn.fit(1, cbs=Boom())
    assert len(learn.cbs) == 1


# ---------------------------------------------------------------- the logging channel
def test_logging_channel_feeds_every_sink(tmp_path, capsys):
    import csv
    class MySink(Callback):
        def __init__(self): self.rows = []
        def after_log(self, learn): self.rows.append(dict(learn.row))
    metrics, sink = MetricsCB(acc=Accuracy()), MySink()
    log_before = metrics._log
    learn = Learner(make_model(), make_dls(), F.cross_entropy, lr=0.3,
                    cbs=[TrainCB(), metrics, sink, ProgressCB(notebook=False), CSVLogger(tmp_path / 'h.csv')])
    learn.fit(2)
    assert sink.rows == learn.history and len(learn.history) == 4
    assert [r['train'] for r in learn.history] == ['train', 'eval', 'train', 'eval']
    assert set(learn.history[0]) == {'acc', 'loss', 'epoch', 'train', 'time'}
    with open(tmp_path / 'h.csv', newline='') as f: rows = list(csv.DictReader(f))
    assert rows == [{k: str(v) for k, v in r.items()} for r in learn.history]
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split() == ['acc', 'loss', 'epoch', 'train', 'time'] and len(out) == 5   # the progress sink's lines
    assert '_log' not in vars(metrics) and metrics._log == log_before                     # nobody patched MetricsCB
    # CSVLogger(append=True) keeps the earlier rows; without append the file starts again
    learn.fit(1, cbs=CSVLogger(tmp_path / 'h.csv', append=True))
    with open(tmp_path / 'h.csv', newline='') as f: assert len(list(csv.DictReader(f))) == 6
    learn.fit(1, cbs=CSVLogger(tmp_path / 'h.csv'))
    with open(tmp_path / 'h.csv', newline='') as f: assert len(list(csv.DictReader(f))) == 2


def test_rows_printed_when_no_sink(capsys):
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), MetricsCB(acc=Accuracy())])
    learn.fit(1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith('{') and "'train': 'train'" in lines[0]
    with pytest.raises(TypeError, match="dict"): learn.log([1, 2])


def test_course_style_log_override_still_works():
    # course notebooks subclass MetricsCB and override _log (e.g. to send rows to Weights & Biases)
    got = []
    class MyMetrics(MetricsCB):
        def _log(self, d): got.append(d)
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), MyMetrics()])
    learn.fit(1)
    assert [d['train'] for d in got] == ['train', 'eval'] and learn.history == []


class HandAcc:
    def reset(self): self.c, self.n = 0, 0
    def update(self, p, t): self.c += (p.argmax(1) == t).sum().item(); self.n += len(t)
    def compute(self): return self.c / self.n


def _valid_reference(model, dl):
    model.eval()
    with torch.no_grad():
        xs, ys = zip(*dl)
        preds = model(torch.cat(xs))
        y = torch.cat(ys)
    return (preds.argmax(1) == y).double().mean().item(), F.cross_entropy(preds, y).item()


@pytest.mark.filterwarnings('ignore:.*torch.jit.script:FutureWarning')   # raised inside torcheval
def test_metrics_cb_torcheval_and_hand_written():
    from torcheval.metrics import MulticlassAccuracy
    dls = make_dls()
    m = MetricsCB(MulticlassAccuracy(), hand=HandAcc())
    learn = Learner(make_model(), dls, F.cross_entropy, lr=0.3, cbs=[TrainCB(), DeviceCB('cpu'), m])
    learn.fit(2)
    acc, loss = _valid_reference(learn.model, dls.valid)
    assert m.all_metrics['MulticlassAccuracy'].compute().item() == pytest.approx(acc, abs=1e-6)
    assert m.all_metrics['hand'].compute() == pytest.approx(acc, abs=1e-12)
    assert m.loss.compute().item() == pytest.approx(loss, rel=1e-5)   # batch-size weighted mean = full mean
    assert learn.history[-1]['train'] == 'eval' and learn.history[-1]['epoch'] == 1
    assert float(learn.history[-1]['loss']) == pytest.approx(loss, abs=5e-4)
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


def test_accuracy_metric_matches_torcheval():
    from torcheval.metrics import MulticlassAccuracy
    ours, ref = Accuracy(), MulticlassAccuracy()
    for _ in range(3):
        p, t = torch.randn(37, 5), torch.randint(0, 5, (37,))
        ours.update(p, t); ref.update(p, t)
    assert abs(float(ours.compute()) - float(ref.compute())) < 1e-6
    ours.reset()
    assert torch.isnan(ours.compute())
    with pytest.raises(ValueError, match=r"preds \(N, C\) and targets \(N,\)"): ours.update(torch.randn(4), torch.zeros(4))


def test_to_cpu():
    x = {'a': [torch.ones(2, dtype=torch.float16), (torch.zeros(1, requires_grad=True), 3), torch.ones(1, dtype=torch.bfloat16)]}
    r = to_cpu(x)
    assert r['a'][0].dtype == torch.float32 and not r['a'][1][0].requires_grad and r['a'][1][1] == 3
    assert isinstance(r['a'][1], tuple) and r['a'][2].dtype == torch.float32


# ---------------------------------------------------------------- the training step
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


def test_two_callbacks_with_the_same_step_are_refused():
    from miniai.accel import MixedPrecision
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), MixedPrecision('bf16')])
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"'predict' is provided by 2 callbacks \(TrainCB, MixedPrecision\)"):
        learn.fit(1)
    assert all(torch.equal(p, q) for p, q in zip(before, learn.model.parameters()))
    with pytest.warns(UserWarning, match="never called"):
        TrainLearner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB()]).fit(1)


def test_accelerate_cb_with_traincb_is_refused():
    pytest.importorskip('accelerate')
    from miniai.accel import AccelerateCB
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), AccelerateCB(mixed_precision='no', cpu=True)])
    with pytest.raises(ValueError, match="AccelerateCB"):
        learn.fit(1)


def test_dict_batches_with_traincb_give_a_clear_error():
    dls = DLs([{'image': torch.randn(4, 6), 'label': torch.zeros(4, dtype=torch.long)}], [])
    with pytest.raises(TypeError, match=r"as_tuple=True") as ei:
        Learner(make_model(), dls, F.cross_entropy, cbs=[TrainCB()]).fit(1, valid=False)
    assert "['image', 'label']" in str(ei.value)


def test_empty_training_loader_is_an_error():
    dls = DLs(DataLoader(TensorDataset(torch.randn(3, 6), torch.zeros(3, dtype=torch.long)), 4, drop_last=True), [])
    with pytest.raises(ValueError, match="dls.train is empty"):
        Learner(make_model(), dls, F.cross_entropy, cbs=[TrainCB()]).fit(1)


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


# ---------------------------------------------------------------- the kept optimizer
def test_optimizer_kept_across_fits_equals_one_long_fit():
    # Adam's moments carry over: fit(1) twice == fit(2) once (same data order: the loader's generator is not reset)
    def run(splits):
        learn = Learner(make_model(seed=3), make_dls(shuffle=True), F.cross_entropy, lr=0.01, opt_func=torch.optim.Adam,
                        cbs=[TrainCB()])
        torch.manual_seed(0)
        for n in splits: learn.fit(n)
        return learn
    a, b = run([1, 1]), run([2])
    assert a.opt.state_dict()['state'][0]['step'] == 2 * 3
    for p, q in zip(a.model.parameters(), b.model.parameters()): torch.testing.assert_close(p, q, rtol=0, atol=0)
    opt = a.opt
    a.fit(1, lr=0.5)
    assert a.opt is opt and opt.param_groups[0]['lr'] == 0.5
    a.fit(1)
    assert opt.param_groups[0]['lr'] == a.lr
    a.fit(1, reset_opt=True)
    assert a.opt is not opt


def test_fit_lr_keeps_group_ratios():
    def opt_func(ps, lr):
        ps = list(ps)
        return torch.optim.SGD([{'params': ps[:2], 'lr': lr}, {'params': ps[2:], 'lr': lr / 10}], lr=lr)
    learn = Learner(make_model(), make_dls(), F.cross_entropy, lr=0.1, opt_func=opt_func, cbs=[TrainCB()])
    learn.fit(1)
    learn.fit(1, lr=0.3)
    assert [g['lr'] for g in learn.opt.param_groups] == pytest.approx([0.3, 0.03])


def test_replaced_model_gets_a_new_optimizer_with_a_warning():
    learn = Learner(make_model(), make_dls(), F.cross_entropy, lr=0.1, cbs=[TrainCB()])
    learn.fit(1)
    learn.model = make_model(seed=7)
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.warns(UserWarning, match="replaced"):
        learn.fit(1)
    assert not all(torch.equal(p, q) for p, q in zip(before, learn.model.parameters()))   # it trained the new model


# ---------------------------------------------------------------- failures
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
    learn.fit(1, cbs=[])


def test_keyboard_interrupt_cleans_up_then_propagates():
    rec = Recorder('after_backward', KeyboardInterrupt(), when=lambda l: l.epoch == 1 and l.iter == 1)
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), rec])
    with pytest.raises(KeyboardInterrupt) as ei:
        learn.fit(3)
    assert learn.interrupted and learn.epochs_done == 1
    assert 'epoch 1, batch 1' in ei.value.__notes__[-1]
    assert rec.events[-4:] == ['cleanup_batch', 'cleanup_epoch', 'cleanup_full_epoch', 'cleanup_fit'] and 'after_fit' not in rec.events
    assert all(p.grad is None for p in learn.model.parameters())   # half-done gradients cleared
    rec.at = None
    learn.fit(1)   # still usable
    assert not learn.interrupted


def test_interrupted_script_exits_nonzero(tmp_path):
    # a script whose fit is interrupted stops there with an error status: it does not go on to its next step
    script = tmp_path / 'train.py'
    script.write_text(textwrap.dedent('''
        import torch, torch.nn.functional as F
        from torch import nn
        from miniai.learner import Learner, TrainCB, Callback
        class CtrlC(Callback):
            def before_batch(self, learn):
                if learn.iter == 1: raise KeyboardInterrupt
        data = [(torch.randn(4, 3), torch.randn(4, 1))] * 3
        learn = Learner(nn.Linear(3, 1), type('D', (), {'train': data, 'valid': data})(), F.mse_loss, cbs=[TrainCB(), CtrlC()])
        learn.fit(2)
        print('NEXT STAGE RAN')
    '''))
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                        os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and 'NEXT STAGE RAN' not in r.stdout
    assert 'KeyboardInterrupt' in r.stderr and 'fit interrupted at epoch 0, batch 1' in r.stderr


# ---------------------------------------------------------------- LR finder
def test_lr_finder_cb():
    torch.manual_seed(0)
    cb = LRFinderCB(gamma=1.3, max_mult=3)
    learn = Learner(make_model(), make_dls(480, 16, 8), F.cross_entropy, lr=1e-4, cbs=[TrainCB()])
    learn.fit(20, valid=False, cbs=cb)
    lrs = torch.tensor(cb.lrs, dtype=torch.float64)
    torch.testing.assert_close(lrs[1:] / lrs[:-1], torch.full_like(lrs[1:], 1.3), rtol=1e-9, atol=0)
    assert lrs[0].item() == pytest.approx(1e-4)
    mins = torch.tensor(cb.losses).cummin(0).values
    assert all(l <= 3 * m for l, m in zip(cb.losses[:-1], mins[:-1]))
    assert len(cb.losses) < 20 * 60
    with pytest.raises(ValueError, match="gamma"):
        LRFinderCB(gamma=0.9)


def _lds_len(xs):
    "Length of the longest strictly decreasing subsequence, by brute force over subsets (tiny inputs only)."
    from itertools import combinations
    for k in range(len(xs), 0, -1):
        for idx in combinations(range(len(xs)), k):
            if all(xs[a] > xs[b] for a, b in zip(idx, idx[1:])): return k, idx
    return 0, ()


def test_suggest_lrs_formulas():
    g = torch.Generator().manual_seed(4)
    lrs = [1e-5 * 1.5**i for i in range(14)]
    losses = (torch.linspace(2, 0.5, 14) + 0.3 * torch.rand(14, generator=g)).tolist()
    s = suggest_lrs(lrs, losses, beta=0.)   # no smoothing: the formulas on the raw losses
    assert isinstance(s, SuggestedLRs)
    assert s.minimum == pytest.approx(lrs[min(range(14), key=losses.__getitem__)] / 10)
    slopes = [(losses[i + 1] - losses[i]) / math.log(lrs[i + 1] / lrs[i]) for i in range(13)]
    assert s.steep == lrs[min(range(13), key=slopes.__getitem__)]
    # valley: a little past the first third of the longest decreasing run (fastai's rule), checked by brute force;
    # the brute force finds one longest run, the suggestion must lie inside some longest run's span
    n, idx = _lds_len(losses)
    i = lrs.index(s.valley)
    assert idx[0] <= i <= idx[-1] or n == 1
    # smoothing: beta > 0 uses the bias-corrected moving average
    sm, avg = [], 0.
    for k, x in enumerate(losses, 1):
        avg = 0.8 * avg + 0.2 * x
        sm.append(avg / (1 - 0.8**k))
    assert suggest_lrs(lrs, losses).minimum == pytest.approx(lrs[min(range(14), key=sm.__getitem__)] / 10)
    with pytest.raises(ValueError, match="at least 3"): suggest_lrs([1e-3], [1.])


def test_lr_find_returns_named_suggestions_and_restores_model_and_optimizer():
    import matplotlib
    matplotlib.use('Agg')
    learn = Learner(make_model(), make_dls(480, 16, 8), F.cross_entropy, lr=0.05, opt_func=torch.optim.Adam, cbs=[TrainCB()])
    learn.fit(1)
    opt = learn.opt
    before = [p.detach().clone() for p in learn.model.parameters()]
    opt_before = {k: {n: t.clone() for n, t in s.items()} for k, s in opt.state_dict()['state'].items()}
    sugg = learn.lr_find()
    assert isinstance(sugg, SuggestedLRs) and all(v > 0 for v in sugg)
    cb = learn.lr_finder
    assert sugg == suggest_lrs(cb.lrs, cb.losses)
    for p, q in zip(before, learn.model.parameters()): assert torch.equal(p, q)
    assert learn.opt is opt and opt.param_groups[0]['lr'] == 0.05
    for k, s in opt.state_dict()['state'].items():
        for n, t in s.items(): assert torch.equal(t, opt_before[k][n]), (k, n)
    assert learn.epochs_done == 1
    fresh = Learner(make_model(), make_dls(480, 16, 8), F.cross_entropy, cbs=[TrainCB()])
    assert lr_find(fresh, plot=False).valley > 0 and fresh.opt is None


def test_lr_find_never_touches_checkpoints(tmp_path):
    import matplotlib
    matplotlib.use('Agg')
    path = tmp_path / 'ck.pt'
    learn = Learner(make_model(), make_dls(480, 16, 8), F.cross_entropy, cbs=[TrainCB(), CheckpointCB(path), MetricsCB()])
    learn.lr_find(plot=False)
    assert not path.exists()
    learn.fit(3)   # trains 3 epochs: the finder's run is not taken for progress
    assert [r['epoch'] for r in learn.history if r['train'] == 'train'] == [0, 1, 2]
    assert torch.load(path, weights_only=True)['epoch'] == 3
