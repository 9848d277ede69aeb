"Tests for miniai.loggers: the TensorBoard sink read back with TensorBoard's reader, the W&B sink against a stand-in module, missing packages."
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.learner import Learner, TrainCB, MetricsCB, Accuracy, lr_find
from miniai.loggers import TensorBoardLogger, WandbLogger, _scalars


def toy():
    torch.manual_seed(0)
    x, y = torch.randn(128, 6), torch.randint(0, 3, (128,))
    dls = SimpleNamespace(train=[(x[i:i + 16], y[i:i + 16]) for i in range(0, 128, 16)], valid=[(x[:32], y[:32])])
    return nn.Linear(6, 3), dls


def test_scalars():
    row = {'accuracy': '0.500', 'loss': torch.tensor(1.25), 'epoch': 3, 'train': 'eval', 'time': '1.2s', 'bad': float('nan')}
    assert _scalars(row) == {'eval/accuracy': 0.5, 'eval/loss': 1.25}


def test_tensorboard_event_file(tmp_path):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    model, dls = toy()
    tb = TensorBoardLogger(tmp_path, every=2)
    learn = Learner(model, dls, F.cross_entropy, lr=0.1, cbs=[TrainCB(), MetricsCB(Accuracy()), tb])
    learn.fit(2)
    tb.close()
    ea = EventAccumulator(str(tmp_path)); ea.Reload()
    assert {'train/loss', 'train/Accuracy', 'eval/loss', 'eval/Accuracy', 'batch/loss'} <= set(ea.Tags()['scalars'])
    for split in ('train', 'eval'):
        rows = [r for r in learn.history if r['train'] == split]
        ev = ea.Scalars(f'{split}/loss')
        assert [e.step for e in ev] == [0, 1]
        assert [round(e.value, 3) for e in ev] == [float(r['loss']) for r in rows]
    assert [e.step for e in ea.Scalars('batch/loss')] == [2, 4, 6, 8, 10, 12, 14, 16]


class FakeRun:
    def __init__(self): self.logged, self.finished = [], False
    def log(self, d): self.logged.append(dict(d))
    def finish(self): self.finished = True


def test_wandb_sink_with_a_stand_in_module(monkeypatch):
    inits = []
    def init(**kw):
        inits.append(kw)
        return FakeRun()
    monkeypatch.setitem(sys.modules, 'wandb', SimpleNamespace(run=None, init=init))
    model, dls = toy()
    wb = WandbLogger(project='p', config={'lr': 0.1}, every=4)
    learn = Learner(model, dls, F.cross_entropy, lr=0.1, cbs=[TrainCB(), MetricsCB(Accuracy()), wb])
    learn.fit(2)
    run = wb.run
    assert inits == [{'project': 'p', 'config': {'lr': 0.1}}]
    epoch_rows = [d for d in run.logged if 'epoch' in d]
    assert len(epoch_rows) == 4 and epoch_rows[1]['epoch'] == 0 and 'eval/loss' in epoch_rows[1]
    assert epoch_rows[1]['eval/loss'] == float(learn.history[1]['loss'])
    assert [d['batch'] for d in run.logged if 'batch' in d] == [4, 8, 12, 16]
    learn.fit(1)   # a second fit keeps the run
    assert len(inits) == 1
    wb.close()
    assert run.finished and wb.run is None


def test_missing_packages_name_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)   # import wandb -> ImportError
    model, dls = toy()
    learn = Learner(model, dls, F.cross_entropy, lr=0.1, cbs=[TrainCB(), MetricsCB(), WandbLogger()])
    with pytest.raises(ImportError, match="pip install wandb"): learn.fit(1)
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    learn = Learner(model, dls, F.cross_entropy, lr=0.1, cbs=[TrainCB(), MetricsCB(), TensorBoardLogger('x')])
    with pytest.raises(ImportError, match="pip install tensorboard"): learn.fit(1)


def test_sinks_sit_out_lr_find(tmp_path):
    pytest.importorskip('tensorboard')
    model, dls = toy()
    tb = TensorBoardLogger(tmp_path / 'tb')
    learn = Learner(model, dls, F.cross_entropy, lr=0.1, cbs=[TrainCB(), MetricsCB(), tb])
    lr_find(learn, plot=False, max_epochs=2)
    assert tb.writer is None and not (tmp_path / 'tb').exists()
