"""Fashion-MNIST speedrun: the wall-clock time to a target test accuracy, through miniai's own Learner and callbacks.

The recipe (after airbench, Keller Jordan 2024, sized for 28×28 and a CPU): the whole training set as one uint8 tensor on
the device, normalised and augmented there (random crop with 1-2 pixels of padding + horizontal flip), a small VGG-style
network (conv-BatchNorm-GELU, max-pooling, a max-pooled linear head), SGD with Nesterov momentum and label smoothing on a
one-cycle schedule, bfloat16 autocast where it is fast (`miniai.accel.fast_bf16`), channels-last memory, flip test-time augmentation. Wall time counts everything from reading the data to the test
accuracy, per seed.

It also measures, in the same run, what each lever is worth (training images/s of the same network, interleaved:
bfloat16 autocast vs float32, channels-last vs not, `torch.compile` vs eager) and what the Learner costs against a bare
loop over the same model, data and schedule.

Run (2-core CPU): .venv/bin/python bench/speedrun_fmnist.py                 # 3 seeds of the default recipe (width 24, 5.5 epochs: 93.59% TTA, 128 s)
                  .venv/bin/python bench/speedrun_fmnist.py --epochs 15 --width 32   # the 10-minute one (94.68% TTA, 465 s)
                  .venv/bin/python bench/speedrun_fmnist.py --levers --overhead      # the ratio tables only
GPU:              python bench/speedrun_fmnist.py --device cuda --width 64 --bs 512
"""
import argparse
import cProfile
import math
import os
import pstats
import statistics
import time
from functools import partial

import torch
from torch import nn
import torch.nn.functional as F

from miniai.accel import MixedPrecision, fast_bf16
from miniai.augment import rand_crop_flip
from miniai.datasets import DataLoaders, TensorLoader, DEBIAN_FMNIST, read_fmnist_split, load_fashion_mnist, dataset_tensors
from miniai.learner import Accuracy, Callback, CancelFitException, Learner, MetricsCB, TrainCB
from miniai.sgd import BatchSchedCB

MEAN, STD = 0.286, 0.353


def sync(device):
    if str(device).startswith('cuda'): torch.cuda.synchronize()


def load(device, data=None):
    "Train/test images as uint8 (N,1,28,28) and int64 labels on `device`."
    folder = data or (DEBIAN_FMNIST if DEBIAN_FMNIST.is_dir() else None)
    if folder is not None:
        (xtr, ytr), (xte, yte) = (read_fmnist_split(folder, s) for s in ('train', 'test'))
        xtr, ytr, xte, yte = (torch.from_numpy(a.copy()) for a in (xtr, ytr, xte, yte))
    else:
        dd = load_fashion_mnist()
        (xtr, ytr), (xte, yte) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    return xtr[:, None].to(device), ytr.long().to(device), xte[:, None].to(device), yte.long().to(device)


def conv_bn(ni, nf, pool=False):
    "conv 3×3 (no bias), optional 2×2 max-pool, BatchNorm, GELU."
    layers = [nn.Conv2d(ni, nf, 3, padding=1, bias=False)]
    if pool: layers.append(nn.MaxPool2d(2))
    return layers + [nn.BatchNorm2d(nf), nn.GELU()]


class SpeedNet(nn.Module):
    "A small VGG-style network for 28×28 images: 28 → 14 → 7 → 3 with two convs per stage, a max-pooled linear head."
    def __init__(self, width=32, n_out=10, scale=1/8):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.body = nn.Sequential(*conv_bn(1, w1), *conv_bn(w1, w2, pool=True), *conv_bn(w2, w2),
                                  *conv_bn(w2, w3, pool=True), *conv_bn(w3, w3), *conv_bn(w3, w3, pool=True))
        self.head = nn.Linear(w3, n_out, bias=False)
        self.scale = scale
    def forward(self, x):
        x = self.body(x)
        return self.head(x.amax((2, 3))) * self.scale


class Prep(Callback):
    "uint8 batches -> normalised floats (channels-last if asked), with random crop + flip augmentation while training."
    order = -5
    def __init__(self, pad, channels_last, generator):
        self.pad, self.cl, self.g = pad, channels_last, generator
    def before_batch(self, learn):
        x, y = learn.batch
        x = (x.float() / 255 - MEAN) / STD
        if learn.training and self.pad: x = rand_crop_flip(x, padding=self.pad, generator=self.g)
        if self.cl: x = x.contiguous(memory_format=torch.channels_last)
        learn.batch = (x, y)


class StopAfter(Callback):
    "End the fit after `n_steps` training batches (for a fractional number of epochs)."
    def __init__(self, n_steps): self.n_steps, self.done = n_steps, 0
    def after_batch(self, learn):
        if not learn.training: return
        self.done += 1
        if self.done >= self.n_steps: raise CancelFitException()


def make(a, seed):
    torch.manual_seed(seed)
    model = SpeedNet(a.width).to(a.device)
    if a.channels_last: model = model.to(memory_format=torch.channels_last)
    return model


def opt_func(a):
    return partial(torch.optim.SGD, momentum=0.9, nesterov=True, weight_decay=a.wd)


@torch.no_grad()
def evaluate(model, xte, yte, a):
    "Test accuracy without and with flip TTA (the sum of the logits of the image and its mirror), from one pass over each."
    model.eval()
    correct, correct_tta = 0, 0
    for i in range(0, len(xte), 2000):
        x = (xte[i:i + 2000].float() / 255 - MEAN) / STD
        if a.channels_last: x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=a.bf16):
            p = model(x).float()
            p_tta = p + model(x.flip(-1)).float()
        y = yte[i:i + 2000]
        correct, correct_tta = correct + int((p.argmax(1) == y).sum()), correct_tta + int((p_tta.argmax(1) == y).sum())
    return correct / len(xte), correct_tta / len(xte)


def run_learner(a, seed, data=None):
    "One speedrun through the Learner; returns (accuracy, accuracy with TTA, seconds in all, seconds training)."
    t0 = time.perf_counter()
    xtr, ytr, xte, yte = data if data is not None else load(a.device, a.data)
    model = make(a, seed)
    g = torch.Generator().manual_seed(seed)
    dls = DataLoaders(TensorLoader(xtr, ytr, a.bs, shuffle=True, drop_last=True, generator=g, tfm=None), [])
    gd = torch.Generator(device=a.device).manual_seed(seed + 1)
    steps = round(a.epochs * len(dls.train))
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=a.lr, total_steps=steps, pct_start=a.pct, div_factor=20,
                    final_div_factor=200, anneal_strategy='linear', cycle_momentum=False)
    loss = partial(F.cross_entropy, label_smoothing=a.ls)
    cbs = [Prep(a.pad, a.channels_last, gd), BatchSchedCB(sched), MixedPrecision('bf16') if a.bf16 else TrainCB(),
           StopAfter(steps)]
    if a.metrics: cbs.append(MetricsCB(acc=Accuracy()))
    learn = Learner(model, dls, loss, lr=a.lr, opt_func=opt_func(a), cbs=cbs)
    if a.compile: learn.model = torch.compile(model)
    t1 = time.perf_counter()
    learn.fit(math.ceil(a.epochs), valid=False)
    sync(a.device)
    t_train = time.perf_counter() - t1
    acc, acc_tta = evaluate(model, xte, yte, a)
    return acc, acc_tta, time.perf_counter() - t0, t_train


def run_bare(a, seed, data):
    "The same training as `run_learner` in a hand-written loop (for the Learner's overhead)."
    xtr, ytr, _, _ = data
    model = make(a, seed)
    g, gd = torch.Generator().manual_seed(seed), torch.Generator(device=a.device).manual_seed(seed + 1)
    opt = opt_func(a)(model.parameters(), lr=a.lr)
    n_b = len(xtr) // a.bs
    steps = round(a.epochs * n_b)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=a.pct, div_factor=20,
                                                final_div_factor=200, anneal_strategy='linear', cycle_momentum=False)
    t = time.perf_counter()
    model.train()
    for step in range(steps):
        i = step % n_b
        if i == 0: order = torch.randperm(len(xtr), generator=g)
        idx = order[i * a.bs:(i + 1) * a.bs]
        x, y = (xtr[idx].float() / 255 - MEAN) / STD, ytr[idx]
        if a.pad: x = rand_crop_flip(x, padding=a.pad, generator=gd)
        if a.channels_last: x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=a.bf16):
            loss = F.cross_entropy(model(x), y, label_smoothing=a.ls)
        loss.backward(); opt.step(); sched.step(); opt.zero_grad()
    sync(a.device)
    return time.perf_counter() - t


def python_share(a, data):
    "The share (%) of one Learner run's time spent inside miniai's own Python functions (not counting what they call)."
    pr = cProfile.Profile()
    pr.enable()
    run_learner(a, 0, data)
    pr.disable()
    st = pstats.Stats(pr).stats
    ours = sum(v[2] for k, v in st.items() if f'{os.sep}miniai{os.sep}' in k[0])
    return 100 * ours / sum(v[2] for v in st.values())


def step_rate(a, bf16, channels_last, compiled, n_steps=12, warm=3):
    "Training images/s of the recipe's network with the given levers (a fixed random batch)."
    model = SpeedNet(a.width).to(a.device)
    if channels_last: model = model.to(memory_format=torch.channels_last)
    m = torch.compile(model) if compiled else model
    opt = opt_func(a)(model.parameters(), lr=1e-3)
    x = torch.randn(a.bs, 1, 28, 28, device=a.device)
    if channels_last: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.bs,), device=a.device)
    for i in range(warm + n_steps):
        if i == warm: sync(a.device); t = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(m(x), y)
        loss.backward(); opt.step(); opt.zero_grad()
    sync(a.device)
    return n_steps * a.bs / (time.perf_counter() - t)


def levers(a):
    "Each lever's speed-up, as ratios of images/s measured interleaved in this run (median of `a.reps`)."
    configs = {'float32': (False, False, False), 'bf16': (True, False, False), 'bf16 + channels-last': (True, True, False),
               'float32 + channels-last': (False, True, False)}
    if a.try_compile: configs['bf16 + channels-last + compile'] = (True, True, True)
    rates = {k: [] for k in configs}
    for r in range(a.reps):
        for k, v in (configs.items() if r % 2 == 0 else reversed(configs.items())):
            rates[k].append(step_rate(a, *v))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f'\n| levers (images/s, bs {a.bs}, width {a.width}) | images/s | vs float32 |\n|---|---|---|')
    for k, v in med.items(): print(f'| {k} | {v:,.0f} | {v / med["float32"]:.2f}x |')
    return med


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--data', default=None)
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--epochs', type=float, default=5.5, help='may be fractional (5.5: five epochs and half of a sixth)')
    p.add_argument('--width', type=int, default=24)
    p.add_argument('--bs', type=int, default=256)
    p.add_argument('--lr', type=float, default=0.2)
    p.add_argument('--wd', type=float, default=5e-4)
    p.add_argument('--ls', type=float, default=0.1, help='label smoothing')
    p.add_argument('--pct', type=float, default=0.25, help='share of the steps warming up')
    p.add_argument('--pad', type=int, default=1, help='random-crop padding (0: no augmentation)')
    p.add_argument('--no-bf16', action='store_true', help='float32 even where bfloat16 autocast is fast')
    p.add_argument('--no-channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile the model for the runs')
    p.add_argument('--metrics', action='store_true', help='a MetricsCB with training accuracy (one sync per batch)')
    p.add_argument('--levers', action='store_true', help='measure the speed-up of each lever')
    p.add_argument('--try-compile', action='store_true', help='include torch.compile in the levers table')
    p.add_argument('--overhead', action='store_true', help='Learner vs a bare loop, interleaved')
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--threads', type=int, default=0)
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    a.bf16 = fast_bf16(a.device) and not a.no_bf16
    a.channels_last = not a.no_channels_last
    dev = torch.cuda.get_device_name() if a.device.startswith('cuda') else f'CPU, {torch.get_num_threads()} threads'
    print(f'{dev}; bf16 autocast: {a.bf16}; channels-last: {a.channels_last}; compile: {a.compile}; SpeedNet width {a.width} '
          f'({sum(p.numel() for p in SpeedNet(a.width).parameters()):,} parameters), {a.epochs} epochs, bs {a.bs}', flush=True)
    if a.levers: levers(a)
    data = load(a.device, a.data) if a.overhead or a.seeds else None
    if a.overhead:
        res = {'Learner': [], 'bare loop': []}
        for r in range(a.reps):
            for k in (('Learner', 'bare loop') if r % 2 == 0 else ('bare loop', 'Learner')):
                res[k].append(run_learner(a, 0, data)[3] if k == 'Learner' else run_bare(a, 0, data))
        l, b = statistics.median(res['Learner']), statistics.median(res['bare loop'])
        print(f'\n| training time, {a.epochs} epochs, interleaved | median s | min-max s |\n|---|---|---|')
        for k, v in res.items(): print(f'| {k} | {statistics.median(v):.2f} | {min(v):.2f}-{max(v):.2f} |')
        print(f'| Learner overhead (ratio of medians) | {100 * (l / b - 1):+.1f}% | |', flush=True)
        print(f'| time in miniai\'s own Python (Learner, callbacks, loader, scheduler), cProfile | {python_share(a, data):.2f}% | |')
    if a.seeds:
        rows = []
        for s in range(a.seeds):
            acc, acc_tta, wall, t_train = run_learner(a, s)   # loads the data itself: its time counts
            rows.append((acc, acc_tta, wall, t_train))
            print(f'seed {s}: test accuracy {acc:.4f}, with flip TTA {acc_tta:.4f}; {wall:.1f}s in all ({t_train:.1f}s training)', flush=True)
        accs, ttas, walls = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        print(f'\n| {a.seeds} seeds | mean | min | max |\n|---|---|---|---|')
        print(f'| test accuracy | {statistics.mean(accs):.4f} | {min(accs):.4f} | {max(accs):.4f} |')
        print(f'| with flip TTA | {statistics.mean(ttas):.4f} | {min(ttas):.4f} | {max(ttas):.4f} |')
        print(f'| wall time, s (data to accuracy) | {statistics.mean(walls):.1f} | {min(walls):.1f} | {max(walls):.1f} |')


if __name__ == '__main__':
    main()
