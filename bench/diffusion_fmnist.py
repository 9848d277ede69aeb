"""Diffusion on Fashion-MNIST: train an epsilon-prediction U-Net, then FID/KID and speed for each sampler.

Data: Fashion-MNIST zero-padded to 32x32 and scaled to [-1, 1] (`miniai.fid.fmnist_32`; the FID
classifier was trained on the same). Model: `EmbUNetModel(1, 1, nfs, num_layers, attn_chans)` trained on
the linear DDPM schedule (1000 steps) with `TrainLearner` + `DDPMCB`, one-cycle Adam, MSE on the noise.
A checkpoint (`--ckpt`) is written atomically after every epoch; running again resumes from it (and
`--epochs` equal to the epochs already done skips training). `--train-minutes` stops at the last epoch
boundary that fits in the budget (the checkpoint keeps the schedule, so a later run continues).

Then for each sampler row it draws `--n-samples` images from the same starting noise and prints one
table: sampler, steps, model evaluations per sample, FID and KID against the 10,000 test images (features
of `miniai.fid.fmnist_classifier`), samples/s; plus the FID/KID of `--n-samples` real training images
(the floor). DDPM/DDIM use the discrete schedule; Euler/Heun/LMS/DPM++ use `EpsDenoiser` with Karras
sigmas between the schedule's sigma_min and sigma_max.

Training and sampling run under `torch.autocast` (`--amp bf16` by default; `no` for float32): on a CPU with
AMX (Sapphire Rapids and later) bfloat16 makes this U-Net about 5x faster than float32 forward, 2-3x in training.

Run:  .venv/bin/python bench/diffusion_fmnist.py [--epochs 25] [--train-minutes 0] [--nfs 32,64,128,256]
          [--n-samples 2048] [--rows all|ddim25,dpmpp2m10,...] [--device cuda] [--ckpt ckpt/diffusion_fmnist.pt]
GPU (the default model): .venv/bin/python bench/diffusion_fmnist.py --device cuda
2-core CPU, the README's table (2.37M-parameter U-Net, attention only at 4x4; 16 epochs took 68 min, then about
26 min for all rows but DDPM, whose 1000 steps take about 1 h per 2,048 samples here, so it was run with 512):
      .venv/bin/python bench/diffusion_fmnist.py --nfs 16,32,64,128 --num-layers 1 --attn-chans 8 --attn-start 3 \
          --epochs 16 --ckpt ckpt/diffusion_cpu.pt --rows dpmpp2m10,dpmpp2m20,lms20,heun20,ddim25,ddim50,ddim100,euler100
      (same) --n-samples 512 --rows dpmpp2m10,ddpm1000
"""
import argparse
import math
import os
import time
from functools import partial

import torch
import torch.nn.functional as F

from miniai.activations import set_seed
from miniai.conv import def_device
from miniai.datasets import DataLoaders, TensorLoader, dataset_tensors, load_fashion_mnist
from miniai.diffusion import (EmbUNetModel, EpsDenoiser, ddim_sample, ddpm_sample, linear_sched, sample_dpmpp_2m,
                              sample_euler, sample_heun, sample_lms, sigmas_karras)
from miniai.diffusion.train import DDPMCB
from miniai.fid import ImageEval, fmnist_32, fmnist_classifier
from miniai.accel import MixedPrecision
from miniai.learner import CancelFitException, Callback, CheckpointCB, DeviceCB, Learner, MetricsCB, ProgressCB, TrainCB
from miniai.sgd import Adam, BatchSchedCB

ROWS = {  # name: (label, kind, steps)
    'ddpm1000': ('DDPM', 'ddpm', 1000), 'ddim100': ('DDIM', 'ddim', 100), 'ddim50': ('DDIM', 'ddim', 50),
    'ddim25': ('DDIM', 'ddim', 25), 'euler100': ('Euler', sample_euler, 100), 'heun20': ('Heun', sample_heun, 20),
    'lms20': ('LMS', sample_lms, 20), 'dpmpp2m20': ('DPM++ 2M', sample_dpmpp_2m, 20), 'dpmpp2m10': ('DPM++ 2M', sample_dpmpp_2m, 10)}


class TimeBudgetCB(Callback):
    "Stop the fit at an epoch boundary when another epoch would not fit in `minutes` (after the checkpoint is written)."
    order = CheckpointCB.order + 10
    def __init__(self, minutes): self.budget = minutes * 60
    def before_fit(self, learn): self.t0, self.t_epoch = time.perf_counter(), time.perf_counter()
    def after_full_epoch(self, learn):
        now = time.perf_counter()
        dur, self.t_epoch = now - self.t_epoch, now
        if now - self.t0 + dur > self.budget:
            print(f'time budget of {self.budget / 60:.1f} min reached after epoch {learn.epoch}', flush=True)
            raise CancelFitException()


class CountCalls(torch.nn.Module):
    "Count the calls to `model` (one call = one model evaluation for the whole batch)."
    def __init__(self, model): super().__init__(); self.model, self.n = model, 0
    def forward(self, *args, **kwargs):
        self.n += 1
        return self.model(*args, **kwargs)


class Autocast(torch.nn.Module):
    "Run `model` under `torch.autocast(dtype)` and return its output in the input's dtype."
    def __init__(self, model, dtype): super().__init__(); self.model, self.dtype = model, dtype
    def forward(self, x, *args, **kwargs):
        xx = x[0] if isinstance(x, (tuple, list)) else x
        with torch.autocast(xx.device.type, dtype=self.dtype): out = self.model(x, *args, **kwargs)
        return out.to(xx.dtype)


AMP = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'no': None}


def sync(device):
    if str(device).startswith('cuda'): torch.cuda.synchronize()


def train(a, xtr, xte, sched):
    nfs = tuple(int(o) for o in a.nfs.split(','))
    set_seed(a.seed)
    model = EmbUNetModel(1, 1, nfs=nfs, num_layers=a.num_layers, attn_chans=a.attn_chans, attn_start=a.attn_start)
    print(f'U-Net nfs={nfs} num_layers={a.num_layers} attn_chans={a.attn_chans}: {sum(p.numel() for p in model.parameters()):,} parameters', flush=True)
    g = torch.Generator().manual_seed(a.seed)
    dls = DataLoaders(TensorLoader(xtr, torch.zeros(len(xtr)), a.bs, shuffle=True, drop_last=True, generator=g, tfm=None),
                      TensorLoader(xte[:a.n_valid], torch.zeros(min(a.n_valid, len(xte))), 512, tfm=None))
    tsched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=a.lr, total_steps=max(a.epochs, 1) * len(dls.train))
    cbs = [DeviceCB(a.device), DDPMCB(sched, generator=torch.Generator().manual_seed(a.seed + 1)), MetricsCB(),
           ProgressCB(notebook=False), BatchSchedCB(tsched), CheckpointCB(a.ckpt)]
    if a.train_minutes: cbs.append(TimeBudgetCB(a.train_minutes))
    cbs.append(TrainCB() if AMP[a.amp] is None else MixedPrecision(AMP[a.amp]))
    learn = Learner(model, dls, F.mse_loss, lr=a.lr, opt_func=partial(Adam, eps=1e-5, wd=a.wd), cbs=cbs)
    if os.path.exists(a.ckpt):
        done = torch.load(a.ckpt, map_location='cpu', weights_only=True).get('epoch', 0)
        print(f'checkpoint {a.ckpt}: {done} of {a.epochs} epochs done', flush=True)
    else: done = 0
    if done < a.epochs:
        t = time.perf_counter()
        learn.fit(a.epochs, resume_from=a.ckpt if done else None)
        print(f'trained in {(time.perf_counter() - t) / 60:.1f} min', flush=True)
    else: learn.load(a.ckpt, with_opt=False)
    return learn.model.to(a.device).eval(), learn.epochs_done


def draw(kind, steps, model, sched, den, n, bs, seed, device):
    "n samples with one sampler, in batches of bs, from noise seeded by `seed` (the same for every row)."
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, bs):
        m = min(bs, n - i)
        x = torch.randn(m, 1, 32, 32, generator=g).to(device)
        gs = torch.Generator().manual_seed(seed + 1 + i)
        if kind == 'ddpm': y = ddpm_sample(model, x, sched, generator=gs)
        elif kind == 'ddim':
            ts = torch.arange(steps - 1, -1, -1) * (len(sched.abar) // steps)   # diffusers' "leading" spacing
            y = ddim_sample(model, x, sched, ts)
        else:
            sigmas = sigmas_karras(steps, sigma_min=float(den.sigma_min), sigma_max=float(den.sigma_max), device=device)
            y = kind(den, x * sigmas[0], sigmas, **({} if kind in (sample_lms, sample_dpmpp_2m) else {"generator": gs}))
        out.append(y.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=25)
    p.add_argument('--train-minutes', type=float, default=0., help='stop training at the last epoch boundary within this budget (0: none)')
    p.add_argument('--nfs', default='32,64,128,256')
    p.add_argument('--num-layers', type=int, default=2)
    p.add_argument('--attn-chans', type=int, default=8, help='0: no attention')
    p.add_argument('--attn-start', type=int, default=1)
    p.add_argument('--bs', type=int, default=256)
    p.add_argument('--lr', type=float, default=5e-3)
    p.add_argument('--wd', type=float, default=0.)
    p.add_argument('--n-train', type=int, default=0, help='first N training images only (0: all 60,000)')
    p.add_argument('--n-valid', type=int, default=1024, help='test images for the validation loss')
    p.add_argument('--n-samples', type=int, default=2048)
    p.add_argument('--sample-bs', type=int, default=512)
    p.add_argument('--rows', default='all', help='all, none (train only), or comma-separated: ' + ','.join(ROWS))
    p.add_argument('--device', default=def_device)
    p.add_argument('--amp', default='bf16', choices=list(AMP), help='autocast dtype for training and sampling (bf16: 2-5x faster on CPUs with AMX)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave the default)')
    p.add_argument('--ckpt', default='ckpt/diffusion_fmnist.pt')
    p.add_argument('--seed', type=int, default=42)
    a = p.parse_args()
    rows = list(ROWS) if a.rows == 'all' else [] if a.rows == 'none' else a.rows.split(',')
    bad = [r for r in rows if r not in ROWS]
    if bad: p.error(f'unknown rows {bad}; choose from {list(ROWS)}')
    if a.threads: torch.set_num_threads(a.threads)

    dd = load_fashion_mnist()
    (xtr, _), (xte, yte) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    xtr, xte = fmnist_32(xtr), fmnist_32(xte)
    xtr_all = xtr
    if a.n_train: xtr = xtr[:a.n_train]
    sched = linear_sched(betamax=0.02, n_steps=1000)
    model, epochs_done = train(a, xtr, xte, sched)
    if not rows: return

    t = time.perf_counter()
    ie = ImageEval(fmnist_classifier(head=False, device=a.device), DataLoaders([], TensorLoader(xte, yte, 1000, tfm=None)))
    print(f'real test features {tuple(ie.feats.shape)} in {time.perf_counter() - t:.1f}s', flush=True)
    reals = xtr_all[torch.randperm(len(xtr_all), generator=torch.Generator().manual_seed(a.seed))[:a.n_samples]]
    res = [('real training images', '-', '-', ie.fid(reals), ie.kid(reals), float('nan'))]
    print(f'reals: FID {res[0][3]:.2f} KID {res[0][4]:.4f}', flush=True)

    counted = CountCalls(model if AMP[a.amp] is None else Autocast(model, AMP[a.amp]))
    den = EpsDenoiser(counted, sched.abar).to(a.device)
    for r in rows:
        label, kind, steps = ROWS[r]
        counted.n = 0
        sync(a.device); t = time.perf_counter()
        s = draw(kind, steps, counted, sched, den, a.n_samples, a.sample_bs, a.seed + 1000, a.device)
        sync(a.device); dt = time.perf_counter() - t
        nfe = counted.n / math.ceil(a.n_samples / a.sample_bs)
        res.append((label, steps, int(nfe), ie.fid(s), ie.kid(s), a.n_samples / dt))
        print(f'{label} {steps}: NFE {nfe:.0f}  FID {res[-1][3]:.2f}  KID {res[-1][4]:.4f}  {res[-1][5]:.1f} samples/s', flush=True)

    dev = torch.cuda.get_device_name() if str(a.device).startswith('cuda') else f'{a.device} ({torch.get_num_threads()} threads)'
    print(f'\n{a.n_samples} samples, U-Net nfs={a.nfs} num_layers={a.num_layers} attn_chans={a.attn_chans} attn_start={a.attn_start}, amp {a.amp}, '
          f'{epochs_done} epochs on {len(xtr):,} images; FID/KID vs 10,000 test images; {dev}\n')
    print('| sampler | steps | model evals | FID | KID | samples/s |')
    print('|---|---|---|---|---|---|')
    for label, steps, nfe, fid, kid, sps in res:
        print(f'| {label} | {steps} | {nfe} | {fid:.2f} | {kid:.4f} | {"-" if math.isnan(sps) else f"{sps:.1f}"} |')


if __name__ == '__main__':
    main()
