"""The bigger training recipe (course lesson 24) on Fashion-MNIST or MNIST: test accuracy, with TTA, and wall time.

Recipe: `miniai.recipe.preact_resnet` (`--nfs`, `--depths`, dropout `--drop` before the head), on the device:
`TrivialAugmentCB` (strength `--ta`), random crop with `--pad` pixels of padding (plus horizontal flips for
Fashion-MNIST, never for MNIST digits), normalisation, random erasing (`miniai.augment.rand_erase`, `--erase`);
cross-entropy with label smoothing `--ls`; AdamW (wd `--wd`) with a one-cycle schedule over `--epochs`; bf16 autocast
where fast, channels-last memory (`--no-channels-last` to turn it off); an EMA of the weights is *not* used. Test accuracy on the 10,000 test images after the last epoch, plain
and with TTA (the mean of the predictions on the image and its mirror image for Fashion-MNIST; and for both datasets
one-pixel shifts in four directions, `--tta-shifts`).

A checkpoint is written after every epoch (`--ckpt`; by default named after the data and a hash of every setting that
shapes the training, so a run with other settings, or a smoke run, never resumes from it); running the same command
again resumes from it.
`--minutes` stops at the last epoch boundary that fits in the budget (the one-cycle schedule is still over `--epochs`,
so a stopped run is not a finished one).

Run:  .venv/bin/python bench/train_recipe.py --data fmnist --epochs 30 --threads 2   # 95.04% (95.02% TTA), 58 min
      .venv/bin/python bench/train_recipe.py --data mnist --epochs 15 --ta 0.3 --depths 1,1,1,1 --threads 2   # 99.75% TTA, 12 min
Smoke test (seconds): --smoke
Measured figures and their commands: bench/results_later.md
"""
import argparse
import hashlib
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from miniai.accel import MixedPrecision, fast_bf16
from miniai.augment import rand_crop_flip, rand_erase
from miniai.datasets import DataLoaders, TensorLoader, dataset_tensors, load_fashion_mnist
from miniai.learner import Accuracy, CancelFitException, Callback, CheckpointCB, DeviceCB, Learner, MetricsCB, ProgressCB, TrainCB
from miniai.mnist import load_mnist
from miniai.recipe import preact_resnet, trivial_augment
from miniai.sgd import BatchSchedCB
from miniai.utils import atomic_write

STATS = {'fmnist': (0.286, 0.353), 'mnist': (0.131, 0.308)}


class Augment(Callback):
    "Training batches: TrivialAugment, crop (+flip), normalise, random erasing; validation batches: normalise only."
    order = DeviceCB.order + 2
    def __init__(self, a, stats, g): self.a, (self.mean, self.std), self.g = a, stats, g
    def before_batch(self, learn):
        x, *rest = learn.batch
        if learn.training:
            if self.a.ta: x = trivial_augment(x, self.a.ta, generator=self.g)
            if self.a.pad or self.a.data == 'fmnist': x = rand_crop_flip(x, self.a.pad, flip=self.a.data == 'fmnist', generator=self.g)
        x = (x - self.mean) / self.std
        if learn.training and self.a.erase: x = rand_erase(x, self.a.erase, generator=self.g)
        if self.a.channels_last: x = x.contiguous(memory_format=torch.channels_last)
        learn.batch = (x, *rest)


class Budget(Callback):
    "Stop at an epoch boundary when another epoch would not fit in `minutes`."
    order = CheckpointCB.order + 10
    def __init__(self, minutes): self.budget = minutes * 60
    def before_fit(self, learn): self.t0 = self.t = time.perf_counter()
    def after_full_epoch(self, learn):
        now = time.perf_counter()
        if self.budget and now - self.t0 + (now - self.t) > self.budget:
            print(f'time budget reached after epoch {learn.epoch}', flush=True)
            raise CancelFitException()
        self.t = now


@torch.no_grad()
def predict(model, x, a, stats, bs=1000):
    "Softmax predictions on x (N, 1, 28, 28) in [0, 1]: plain, and averaged over the TTA views."
    model.eval()
    views = [lambda t: t]
    if a.data == 'fmnist': views.append(lambda t: t.flip(-1))
    if a.tta_shifts:
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            views.append(lambda t, dy=dy, dx=dx: torch.roll(F.pad(t, (1, 1, 1, 1)), (dy, dx), (2, 3))[..., 1:-1, 1:-1])
    outs = []
    for v in views:
        ps = []
        for i in range(0, len(x), bs):
            t = (v(x[i:i + bs].to(a.device)) - stats[0]) / stats[1]
            if a.channels_last: t = t.contiguous(memory_format=torch.channels_last)
            with torch.autocast(torch.device(a.device).type, dtype=torch.bfloat16, enabled=a.bf16): ps.append(model(t).float().softmax(1).cpu())
        outs.append(torch.cat(ps))
    return outs[0], torch.stack(outs).mean(0)


def run_key(a):
    "A short hash of the settings that shape the training (not threads, device, paths, the time budget or the TTA views)."
    keep = {k: v for k, v in sorted(vars(a).items()) if k not in ('threads', 'device', 'ckpt', 'out', 'minutes', 'tta_shifts')}
    return hashlib.sha1(json.dumps(keep, default=str).encode()).hexdigest()[:10]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='fmnist', choices=['fmnist', 'mnist'])
    p.add_argument('--epochs', type=int, default=30); p.add_argument('--minutes', type=float, default=0.)
    p.add_argument('--nfs', default='32,64,128,256'); p.add_argument('--depths', default='2,2,2,2'); p.add_argument('--drop', type=float, default=0.2)
    p.add_argument('--bs', type=int, default=256); p.add_argument('--lr', type=float, default=3e-3); p.add_argument('--wd', type=float, default=0.05)
    p.add_argument('--ta', type=float, default=0.4, help='TrivialAugment strength (0: off)')
    p.add_argument('--pad', type=int, default=2); p.add_argument('--erase', type=float, default=0.2); p.add_argument('--ls', type=float, default=0.1)
    p.add_argument('--tta-shifts', type=int, default=1)
    p.add_argument('--device', default='cpu', help='cpu or cuda (with a GPU: --device cuda --threads 0)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--no-channels-last', action='store_true', help='keep the default memory format (channels-last: 1.2-1.4x faster for the 4-stage networks here)')
    p.add_argument('--ckpt', default=''); p.add_argument('--out', default='bench_out/recipe'); p.add_argument('--seed', type=int, default=42)
    p.add_argument('--smoke', action='store_true')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    if a.smoke: a.epochs, a.nfs, a.depths = 1, '8,16', '1,1'
    a.bf16, a.channels_last = fast_bf16(a.device), not a.no_channels_last
    if a.data == 'fmnist':
        dd = load_fashion_mnist()
        (xtr, ytr), (xte, yte) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    else:
        mn = load_mnist()
        (xtr, ytr), (xte, yte) = mn['train'], mn['test']
    if a.smoke: xtr, ytr, xte, yte = xtr[:1024], ytr[:1024], xte[:500], yte[:500]
    xte_f = xte.unsqueeze(1).float() / 255
    torch.manual_seed(a.seed)
    model = preact_resnet(nfs=tuple(int(o) for o in a.nfs.split(',')), depths=tuple(int(o) for o in a.depths.split(',')), drop=a.drop)
    if a.channels_last: model = model.to(memory_format=torch.channels_last)
    n_par = sum(q.numel() for q in model.parameters())
    g = torch.Generator().manual_seed(a.seed)
    dls = DataLoaders(TensorLoader(xtr, ytr, a.bs, shuffle=True, drop_last=True, generator=g), TensorLoader(xte, yte, 1000))
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=a.lr, total_steps=a.epochs * len(dls.train))
    ckpt = a.ckpt or f'ckpt/recipe_{a.data}_{run_key(a)}.pt'
    out = Path(a.out + ('_smoke' if a.smoke else '')); out.mkdir(parents=True, exist_ok=True)
    cbs = [DeviceCB(a.device), Augment(a, STATS[a.data], torch.Generator(a.device).manual_seed(a.seed + 1)), MixedPrecision('bf16') if a.bf16 else TrainCB(),
           MetricsCB(Accuracy()), ProgressCB(notebook=False), BatchSchedCB(sched), CheckpointCB(ckpt), Budget(a.minutes)]
    learn = Learner(model, dls, partial(F.cross_entropy, label_smoothing=a.ls), lr=a.lr,
                    opt_func=partial(torch.optim.AdamW, weight_decay=a.wd), cbs=cbs)
    done = torch.load(ckpt, map_location='cpu', weights_only=True).get('epoch', 0) if Path(ckpt).is_file() else 0
    print(f'{a.data}: preact_resnet nfs={a.nfs} depths={a.depths}: {n_par:,} parameters; {done} of {a.epochs} epochs done', flush=True)
    t = time.perf_counter()
    if done < a.epochs: learn.fit(a.epochs, resume_from=ckpt if done else None)
    else: learn.load(ckpt, with_opt=False)
    secs = time.perf_counter() - t
    plain, tta = predict(model, xte_f, a, STATS[a.data])
    acc, acc_tta = (plain.argmax(1) == yte).float().mean().item(), (tta.argmax(1) == yte).float().mean().item()
    res = dict(args=vars(a), params=n_par, epochs_done=learn.epochs_done, train_minutes_this_run=secs / 60, accuracy=acc, accuracy_tta=acc_tta,
               history=learn.history)
    atomic_write(out / f'{a.data}.json', json.dumps(res, indent=2, default=str))
    print(f'{a.data}: {learn.epochs_done} epochs ({secs / 60:.1f} min this run): test accuracy {acc:.4f}, with TTA {acc_tta:.4f}', flush=True)


if __name__ == '__main__':
    main()
