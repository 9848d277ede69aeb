"Tests for miniai.checkpoint: atomic saves, exact resume through fit(resume_from=...), all-or-nothing loading, clear errors."
import os
from functools import partial

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.checkpoint import CheckpointCB, read_checkpoint
from miniai.learner import Callback, Learner, MomentumLearner, TrainCB

from test_learner import make_dls, make_model


class HandAcc:
    def reset(self): pass
    def update(self, p, t): pass
    def compute(self): return 0.


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
    # the learner had no optimizer yet: load created it and restored its state directly
    sa, sb = learn.opt.state_dict(), other.opt.state_dict()
    for k in sa['state']:
        for n in ('exp_avg', 'exp_avg_sq', 'step'):
            torch.testing.assert_close(sa['state'][k][n], sb['state'][k][n], rtol=0, atol=0)
    opt = other.opt
    other.fit(1)
    assert other.opt is opt   # and the next fit keeps it

    torch.save({'not': 'a checkpoint'}, tmp_path / 'bad.pt')
    with pytest.raises(ValueError, match="not a Learner checkpoint"):
        other.load(tmp_path / 'bad.pt')
    # arbitrary pickled objects are refused (weights_only=True)
    torch.save({'model': HandAcc()}, tmp_path / 'evil.pt')
    with pytest.raises(ValueError, match="evil.pt.*[Ww]eights.only"):
        other.load(tmp_path / 'evil.pt')


def test_load_that_does_not_fit_leaves_the_model_unchanged(tmp_path):
    big = Learner(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    big.save(tmp_path / 'big.pt')
    # the first layer fits, the second does not: torch's load_state_dict would copy the first before failing
    small = Learner(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    before = {k: v.clone() for k, v in small.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"big\.pt does not fit the model \(nothing was loaded\)[\s\S]*2\.weight: checkpoint \(4, 8\), model \(3, 8\)"):
        small.load(tmp_path / 'big.pt')
    for k, v in small.model.state_dict().items(): assert torch.equal(v, before[k]), k
    # strict=False still refuses shape mismatches, and allows missing keys
    with pytest.raises(ValueError, match="does not fit"):
        small.load(tmp_path / 'big.pt', strict=False)
    extra = Learner(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 4)), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    with pytest.raises(ValueError, match="missing from the checkpoint: 3.weight"):
        extra.load(tmp_path / 'big.pt')
    extra.load(tmp_path / 'big.pt', strict=False)
    torch.testing.assert_close(extra.model[2].weight, big.model[2].weight, rtol=0, atol=0)


def test_truncated_empty_and_missing_files_name_the_file(tmp_path):
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB()])
    learn.fit(1)
    learn.save(tmp_path / 'good.pt')
    data = (tmp_path / 'good.pt').read_bytes()
    (tmp_path / 'cut.pt').write_bytes(data[:len(data) // 2])
    (tmp_path / 'empty.pt').write_bytes(b'')
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"cut\.pt: cannot load this checkpoint.*truncated or corrupt"):
        learn.load(tmp_path / 'cut.pt')
    with pytest.raises(ValueError, match=r"empty\.pt: the checkpoint file is empty"):
        learn.load(tmp_path / 'empty.pt')
    with pytest.raises(FileNotFoundError, match=r"nope\.pt: no such checkpoint"):
        learn.load(tmp_path / 'nope.pt')
    with pytest.raises(ValueError, match=r"cut\.pt"):
        learn.fit(2, resume_from=tmp_path / 'cut.pt')
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, before[k]), k


def test_optimizer_of_another_class_is_refused_naming_both(tmp_path):
    from miniai.sgd import Adam
    a = Learner(make_model(), make_dls(), F.cross_entropy, opt_func=torch.optim.Adam, cbs=[TrainCB()])
    a.fit(1)
    a.save(tmp_path / 'adam.pt')
    b = Learner(make_model(seed=4), make_dls(), F.cross_entropy, opt_func=Adam, cbs=[TrainCB()])
    before = {k: v.clone() for k, v in b.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"torch\.optim\.adam\.Adam optimizer, but this learner's optimizer is a miniai\.sgd\.Adam"):
        b.load(tmp_path / 'adam.pt')
    for k, v in b.model.state_dict().items(): assert torch.equal(v, before[k]), k
    b.load(tmp_path / 'adam.pt', with_opt=False)   # the weights alone are fine


def test_failing_callback_state_rolls_back(tmp_path):
    class Stateful(Callback):
        def __init__(self, fail=False): self.fail, self.n = fail, 0
        def after_batch(self, learn): self.n += 1
        def state_dict(self): return {'n': self.n}
        def load_state_dict(self, sd):
            if self.fail: raise RuntimeError('cannot load this state')
            self.n = sd['n']
    a = Learner(make_model(), make_dls(), F.cross_entropy, opt_func=torch.optim.Adam, cbs=[TrainCB(), Stateful()])
    a.fit(1)
    a.save(tmp_path / 'a.pt')
    b = Learner(make_model(seed=5), make_dls(), F.cross_entropy, opt_func=torch.optim.Adam, cbs=[TrainCB(), Stateful(fail=True)])
    b.fit(1)
    before = {k: v.clone() for k, v in b.model.state_dict().items()}
    opt_before = {k: s['exp_avg'].clone() for k, s in b.opt.state_dict()['state'].items()}
    with pytest.raises(RuntimeError, match='cannot load'):
        b.load(tmp_path / 'a.pt')
    for k, v in b.model.state_dict().items(): assert torch.equal(v, before[k]), k
    for k, s in b.opt.state_dict()['state'].items(): assert torch.equal(s['exp_avg'], opt_before[k])
    ok = Learner(make_model(seed=5), make_dls(), F.cross_entropy, opt_func=torch.optim.Adam, cbs=[TrainCB(), Stateful()])
    ok.load(tmp_path / 'a.pt')
    assert ok.cbs[1].n == a.cbs[1].n == 3 + 2


class StepSchedCB(Callback):
    "A callback holding a torch LR scheduler (stepped per epoch), to check its state is checkpointed."
    def before_fit(self, learn): self.sched = torch.optim.lr_scheduler.StepLR(learn.opt, step_size=3, gamma=0.5)
    def after_full_epoch(self, learn): self.sched.step()


class Crash(Callback):
    def __init__(self, epoch, it, exc): self.epoch, self.it, self.exc = epoch, it, exc
    def before_batch(self, learn):
        if learn.epoch == self.epoch and learn.iter == self.it: raise self.exc


@pytest.mark.parametrize('kind', ['momentum_learner', 'sgd_sched_dropout', 'miniai_adam_onecycle'])
def test_resume_equals_uninterrupted(tmp_path, kind):
    def run(path, extra=(), n=4, resume=False):
        torch.manual_seed(123)   # global RNG (dropout) changes between runs unless restored
        model = make_model(seed=1)
        if kind == 'momentum_learner':
            learn = MomentumLearner(model, make_dls(), F.cross_entropy, lr=0.1, cbs=[CheckpointCB(path), *extra])
        elif kind == 'miniai_adam_onecycle':   # the optimizer and scheduler callback of miniai.sgd
            from miniai.sgd import Adam, BatchSchedCB
            sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05, total_steps=n * 3)
            learn = Learner(model, make_dls(), F.cross_entropy, lr=0.05, opt_func=Adam,
                            cbs=[TrainCB(), BatchSchedCB(sched), CheckpointCB(path), *extra])
        else:
            opt = lambda ps, lr: torch.optim.SGD(ps, lr, momentum=0.9)
            learn = Learner(model, make_dls(), F.cross_entropy, lr=0.2, opt_func=opt,
                            cbs=[TrainCB(), StepSchedCB(), CheckpointCB(path), *extra])
        learn.fit(n, resume_from=path if resume else None)
        return learn

    full = run(tmp_path / 'full.pt')
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / 'part.pt', [Crash(2, 1, RuntimeError('crash'))])
    assert read_checkpoint(tmp_path / 'part.pt')['epoch'] == 2
    resumed = run(tmp_path / 'part.pt', resume=True)
    assert list(resumed.epochs) == [2, 3]
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    if kind != 'momentum_learner':
        assert resumed.opt.param_groups[0]['lr'] == pytest.approx(full.opt.param_groups[0]['lr'])
    # without the checkpoint the restarted run would differ
    fresh = run(tmp_path / 'other.pt', n=2)
    assert not all(torch.equal(p, q) for p, q in zip(full.model.parameters(), fresh.model.parameters()))


def test_checkpoint_never_resumes_silently(tmp_path):
    path = tmp_path / 'ck.pt'
    learn = Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), CheckpointCB(path)])
    learn.fit(3)
    again = Learner(make_model(seed=2), make_dls(), F.cross_entropy, cbs=[TrainCB(), CheckpointCB(path), Recorder()])
    again.fit(2)   # a new run that happens to use the same path starts at epoch 0 and trains
    assert list(again.epochs) == [0, 1] and again.cbs[2].epochs == [0, 1]
    assert read_checkpoint(path)['epoch'] == 2
    with pytest.warns(UserWarning, match="nothing left to train"):
        again.fit(2, resume_from=path)
    with pytest.raises(TypeError, match="resume_from"):
        CheckpointCB(path, resume=True)
    with pytest.raises(ValueError, match="not both"):
        again.fit(3, start_epoch=1, resume_from=path)
    with pytest.raises(FileNotFoundError):
        again.fit(3, resume_from=tmp_path / 'missing.pt')


class Recorder(Callback):
    def __init__(self): self.epochs = []
    def before_full_epoch(self, learn): self.epochs.append(learn.epoch)


def test_checkpoint_every(tmp_path):
    saved = []
    class Spy(CheckpointCB):
        def after_full_epoch(self, learn):
            super().after_full_epoch(learn)
            if os.path.exists(self.path): saved.append(torch.load(self.path, weights_only=True)['epoch'])
    Learner(make_model(), make_dls(), F.cross_entropy, cbs=[TrainCB(), Spy(tmp_path / 'c.pt', every=2)]).fit(3)
    assert sorted(set(saved)) == [2, 3]
    with pytest.raises(ValueError, match="every"):
        CheckpointCB('x.pt', every=0)


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


def test_interrupt_keeps_last_checkpoint_and_resume_finishes(tmp_path):
    path = tmp_path / 'ck.pt'
    def run(extra=(), resume=False):
        torch.manual_seed(0)
        learn = Learner(make_model(seed=1), make_dls(), F.cross_entropy, lr=0.1, cbs=[TrainCB(), CheckpointCB(path), *extra])
        learn.fit(3, resume_from=path if resume else None)
        return learn
    full = run()
    path.unlink()
    with pytest.raises(KeyboardInterrupt):
        run([Crash(1, 2, KeyboardInterrupt())])
    assert read_checkpoint(path)['epoch'] == 1
    resumed = run(resume=True)
    for p, q in zip(full.model.parameters(), resumed.model.parameters()): torch.testing.assert_close(p, q, rtol=0, atol=0)
