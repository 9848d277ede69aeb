"""Fashion-MNIST training benchmark: Learner vs a bare PyTorch loop (interleaved), data-time share, accuracy.

Trains the course's ResNet (`miniai.resnet.get_resnet`, 1.2M parameters) with one-cycle `Adam`
(max lr 2e-2, wd 1e-5) at batch size 1024, as the course's ResNet lesson does, twice per repeat:
through `Learner` (TrainCB, DeviceCB, MetricsCB with accuracy, ProgressCB, BatchTransformCB, BatchSchedCB)
and through a hand-written loop doing the same work (normalise, forward, loss, backward, step, schedule,
loss/accuracy bookkeeping). The two runs use the same seed, initial weights and batch order, so their
results agree too. Runs alternate which goes first, so load on the machine hits both alike.

Run:  .venv/bin/python bench/train_fmnist.py [--epochs 5] [--reps 1] [--device cpu|cuda] [--n-train N]
  Learner overhead (interleaved with the bare loop; bs 256 gives the callbacks 4x more batches to cost):
      .venv/bin/python bench/train_fmnist.py --epochs 1 --reps 3 --bs 256
  5-epoch accuracy (the course reached 93.4%): the ResNet with a global-average-pool head, bs 256:
      .venv/bin/python bench/train_fmnist.py --epochs 5 --model resnet_gap --bs 256 --lr 1e-2 --skip-bare
  20-epoch accuracy with crop+flip augmentation and mirror TTA (the course reached 94.5%):
      .venv/bin/python bench/train_fmnist.py --epochs 20 --model resnet_gap --bs 256 --lr 1e-2 --augment --tta --skip-bare
Prints one table. "data %" is the time spent waiting for the next batch from the data loader as a
share of the rest of the training step (timed per batch, with a device sync when on a GPU).
"""
import argparse
import os
import statistics
import time
from functools import partial

import torch
from torch import nn
import torch.nn.functional as F

from miniai.activations import set_seed
from miniai.conv import def_device
from miniai.datasets import DataLoaders, load_fashion_mnist
from miniai.init import BatchTransformCB, init_weights
from miniai.learner import Accuracy, Callback, DeviceCB, Learner, MetricsCB, ProgressCB, TrainCB
from miniai.augment import rand_crop_flip, tfm_batch, tta_preds
from miniai.resnet import act_gr, get_resnet, get_resnet_gap
from miniai.sgd import Adam, BatchSchedCB

XMEAN, XSTD = 0.28, 0.35


def _norm(b): return (b[0] - XMEAN)/XSTD, b[1]


def _sync(device):
    if str(device).startswith('cuda'): torch.cuda.synchronize()


class DataTimeCB(Callback):
    "Time spent waiting for batches (end of one batch to the start of the next) and in the steps, training passes only."
    order = -100
    def __init__(self, device): self.device, self.data_t, self.step_t = device, 0., 0.
    def before_epoch(self, learn): self.t = time.perf_counter()
    def before_batch(self, learn):
        now = time.perf_counter()
        if learn.training: self.data_t += now - self.t
        self.t = now
    def after_batch(self, learn):
        _sync(self.device)
        now = time.perf_counter()
        if learn.training: self.step_t += now - self.t
        self.t = now


def make_model(a):
    set_seed(a.seed)
    nfs = tuple(int(o) for o in a.nfs.split(',')) if a.nfs else None
    if a.model == 'resnet': m = get_resnet(act_gr, norm=nn.BatchNorm2d, **({'nfs': nfs} if nfs else {}))
    else: m = get_resnet_gap(act_gr, norm=nn.BatchNorm2d, **({'nfs': nfs} if nfs else {}))
    return m.apply(partial(init_weights, leaky=0.1))


def make_dls(dd, a):
    return DataLoaders.from_dd(dd, a.bs, generator=torch.Generator().manual_seed(a.seed))


def run_learner(dd, a):
    dls, model = make_dls(dd, a), make_model(a)
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=a.lr, total_steps=a.epochs*len(dls.train))
    dt = DataTimeCB(a.device)
    metrics = MetricsCB(accuracy=Accuracy())
    cbs = [TrainCB(), DeviceCB(a.device), metrics, ProgressCB(), BatchTransformCB(_norm), BatchSchedCB(sched), dt]
    if a.augment: cbs.append(BatchTransformCB(partial(tfm_batch, tfm_x=partial(rand_crop_flip, padding=a.pad)), on_val=False))  # after _norm, on the device
    learn = Learner(model, dls, F.cross_entropy, lr=a.lr, cbs=cbs, opt_func=partial(Adam, wd=1e-5))
    _sync(a.device); t = time.perf_counter()
    learn.fit(a.epochs)
    _sync(a.device); wall = time.perf_counter() - t
    res = dict(wall=wall, data=dt.data_t, step=dt.step_t, acc=float(metrics.metrics['accuracy'].compute()))
    if a.tta:
        preds, targs = tta_preds(learn)  # mean of the predictions on the test images and their mirror images
        res['tta'] = float((preds.argmax(1) == targs).float().mean())
    return res


def run_bare(dd, a):
    dls, model = make_dls(dd, a), make_model(a)
    dev = a.device
    model.to(dev)
    opt = Adam(model.parameters(), a.lr, wd=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs*len(dls.train))
    data_t = step_t = 0.
    _sync(dev); t0 = time.perf_counter()
    for epoch in range(a.epochs):
        for train, dl in ((True, dls.train), (False, dls.valid)):
            model.train(train)
            tot_loss, correct, n = 0., 0, 0
            te = t = time.perf_counter()
            with torch.set_grad_enabled(train):
                for xb, yb in dl:
                    now = time.perf_counter()
                    if train: data_t += now - t
                    t = now
                    xb, yb = xb.to(dev), yb.to(dev)
                    xb = (xb - XMEAN)/XSTD
                    preds = model(xb)
                    loss = F.cross_entropy(preds, yb)
                    if train:
                        loss.backward(); opt.step(); sched.step(); opt.zero_grad()
                    tot_loss += loss.item()*len(yb); correct += int((preds.argmax(1) == yb).sum()); n += len(yb)
                    _sync(dev)
                    now = time.perf_counter()
                    if train: step_t += now - t
                    t = now
            print(f"{correct/n:.3f}  {tot_loss/n:.3f}  {epoch}  {'train' if train else 'eval'}  {time.perf_counter()-te:.1f}s", flush=True)
    _sync(dev); wall = time.perf_counter() - t0
    return dict(wall=wall, data=data_t, step=step_t, acc=correct/n)


def warmup(dd, a, n=3):
    "A few untimed training steps, so one-off costs (allocator, kernel selection, CUDA context) hit neither timed run."
    dls, model = make_dls(dd, a), make_model(a).to(a.device)
    opt = Adam(model.parameters(), 1e-3)
    for i, (xb, yb) in enumerate(dls.train):
        if i == n: break
        F.cross_entropy(model(xb.to(a.device)), yb.to(a.device)).backward(); opt.step(); opt.zero_grad()
    _sync(a.device)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--reps', type=int, default=1, help='repeats of the (Learner, bare loop) pair, alternating order')
    p.add_argument('--device', default=def_device)
    p.add_argument('--model', choices=['resnet', 'resnet_gap'], default='resnet', help="get_resnet (course, 1.2M) or get_resnet_gap")
    p.add_argument('--nfs', default='', help="channel sizes, e.g. 4,8,16,32,64,128 for a smaller model (default: the course's)")
    p.add_argument('--bs', type=int, default=1024)
    p.add_argument('--lr', type=float, default=2e-2)
    p.add_argument('--n-train', type=int, default=0, help='use the first N training images (0: all 60,000)')
    p.add_argument('--n-valid', type=int, default=0, help='use the first N test images (0: all 10,000)')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--skip-bare', action='store_true', help='only the Learner run (accuracy), no overhead comparison')
    p.add_argument('--augment', action='store_true', help='random crop + flip of training batches on the device (needs --skip-bare)')
    p.add_argument('--pad', type=int, default=1, help='--augment: zero padding before the random crop (the course used 1)')
    p.add_argument('--tta', action='store_true', help='also report test-time-augmented accuracy (with the flip; needs --skip-bare)')
    a = p.parse_args()
    if (a.augment or a.tta) and not a.skip_bare: p.error('--augment and --tta measure accuracy only: add --skip-bare')
    dd = load_fashion_mnist()
    dd = {'train': dd['train'].select(range(a.n_train)) if a.n_train else dd['train'],
          'test': dd['test'].select(range(a.n_valid)) if a.n_valid else dd['test']}
    n_params = sum(p.numel() for p in make_model(a).parameters())
    warmup(dd, a)
    res = {'Learner': [], 'bare loop': []}
    for r in range(a.reps):
        order = ['Learner', 'bare loop'] if r % 2 == 0 else ['bare loop', 'Learner']
        for name in order:
            if name == 'bare loop' and a.skip_bare: continue
            print(f"--- rep {r}: {name}", flush=True)
            res[name].append((run_learner if name == 'Learner' else run_bare)(dd, a))
    dev = a.device
    if str(dev).startswith('cuda'): dev = f"{dev} ({torch.cuda.get_device_name()})"
    print(f"\nFashion-MNIST {len(dd['train'])} train / {len(dd['test'])} valid images, {a.model} "
          f"({n_params/1e6:.2f}M params), bs {a.bs}, {a.epochs} epochs{f', crop (pad {a.pad})+flip augmentation' if a.augment else ''}, device {dev}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("| run | reps | wall s (median) | s/epoch | data % of step | valid accuracy |")
    print("|--|--|--|--|--|--|")
    med = {}
    for name, rs in res.items():
        if not rs: continue
        med[name] = statistics.median(o['wall'] for o in rs)
        share = statistics.median(o['data']/o['step'] for o in rs)
        accs = ', '.join(f"{o['acc']:.4f}" + (f" (TTA {o['tta']:.4f})" if 'tta' in o else '') for o in rs)
        print(f"| {name} | {len(rs)} | {med[name]:.1f} | {med[name]/a.epochs:.1f} | {100*share:.2f} | {accs} |")
    if len(med) == 2:
        print(f"| Learner overhead | | {100*(med['Learner']/med['bare loop'] - 1):+.1f}% | | | |")


if __name__ == '__main__':
    main()
