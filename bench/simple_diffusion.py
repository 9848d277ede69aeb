"""Simple diffusion (a transformer at the U-Net's bottleneck) against the convolutional U-Net, at the same parameter count and time budget.

Both models are trained with the EDM recipe of lesson 28b (`EDMCB`: log-normal σ, preconditioning, c_noise = ln σ/4,
`KarrasDenoiser`) plus an `EMA` of the weights (decay 0.999, warm-up), AdamW with a one-cycle schedule over the time
budget (`diffusion_ablation.TimedOneCycle`), bf16 autocast where it is fast, on all 60,000 Fashion-MNIST training
images at 32x32 in [-1, 1] (`miniai.fid.fmnist_32`), for `--minutes` of wall time each. Then 2,048 DPM++ 2M samples
(`--steps` steps, σ in [0.002, 80]) from the same noise for both, FID/KID against the 10,000 test images on the shipped
classifier's features (`miniai.fid.ImageEval`), the README's protocol.

  simple diffusion: `SimpleDiffusionModel(nfs=(32, 64, 128), depth=2, n_heads=4)`: 8x8 = 64 tokens of 128 channels
  U-Net:            `EmbUNetModel(nfs=(32, 64, 128), num_layers=1, attn_chans=8, attn_start=2)` (attention at 8x8)
  (2.47M and 2.46M parameters)

Run (2-core CPU, one thread: on a shared CPU more threads are much slower):
    .venv/bin/python bench/simple_diffusion.py --minutes 25
Smoke test (seconds): --smoke
Measured figures and their commands: bench/results_later.md
"""
import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from miniai.accel import MixedPrecision, fast_bf16
from miniai.datasets import DataLoaders, TensorLoader, dataset_tensors, load_fashion_mnist
from miniai.diffusion import EmbUNetModel, KarrasDenoiser, sample_dpmpp_2m, sigmas_karras
from miniai.diffusion.edm import EDMCB, LogSigmaCond
from miniai.ema import EMA
from miniai.fid import ImageEval, fmnist_32, fmnist_classifier
from miniai.learner import DeviceCB, Learner, TrainCB
from miniai.transformer import SimpleDiffusionModel
from miniai.utils import atomic_write
from diffusion_ablation import Autocast, TimedOneCycle   # bench/ is the script's folder, so its sibling imports


def models(a):
    nfs = tuple(int(o) for o in a.nfs.split(','))
    return {'simple diffusion': lambda: SimpleDiffusionModel(1, 1, nfs=nfs, depth=a.depth, n_heads=a.n_heads),
            'U-Net': lambda: EmbUNetModel(1, 1, nfs=nfs, num_layers=1, attn_chans=a.attn_chans, attn_start=len(nfs) - 1)}


def train(make, a, xtr, bf16):
    torch.manual_seed(a.seed)
    net = LogSigmaCond(make()).to(a.device)
    dls = DataLoaders(TensorLoader(xtr, torch.zeros(len(xtr)), a.bs, shuffle=True, drop_last=True,
                                   generator=torch.Generator().manual_seed(a.seed), tfm=None), [])
    ema, timer = EMA(0.999), TimedOneCycle(a.minutes * 60, a.lr)
    learn = Learner(net, dls, F.mse_loss, lr=a.lr, opt_func=lambda ps, lr: torch.optim.AdamW(ps, lr=lr, eps=1e-5, weight_decay=0.),
                    cbs=[DeviceCB(a.device), EDMCB(a.sig_data, generator=torch.Generator().manual_seed(a.seed + 1)), ema, timer,
                         MixedPrecision('bf16') if bf16 else TrainCB()])
    t = time.perf_counter()
    learn.fit(10**6, valid=False)
    return ema.ema_model.eval(), timer.steps, time.perf_counter() - t


@torch.no_grad()
def draw(den, n, bs, steps, seed, device='cpu'):
    g, out = torch.Generator().manual_seed(seed), []
    sig = sigmas_karras(steps, 0.002, 80., device=device)
    for i in range(0, n, bs):
        x = (torch.randn(min(bs, n - i), 1, 32, 32, generator=g) * 80.).to(device)
        out.append(sample_dpmpp_2m(den, x, sig).clamp(-1, 1).cpu())
    return torch.cat(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--minutes', type=float, default=25.)
    p.add_argument('--nfs', default='32,64,128'); p.add_argument('--depth', type=int, default=2); p.add_argument('--n-heads', type=int, default=4)
    p.add_argument('--attn-chans', type=int, default=8)
    p.add_argument('--bs', type=int, default=128); p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--sig-data', type=float, default=0.66)
    p.add_argument('--steps', type=int, default=10); p.add_argument('--n-samples', type=int, default=2048)
    p.add_argument('--sample-bs', type=int, default=512)
    p.add_argument('--device', default='cpu', help='cpu or cuda (with a GPU: --device cuda --threads 0)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='bench_out/simple_diffusion')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--smoke', action='store_true')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    if a.smoke: a.minutes, a.nfs, a.depth, a.bs, a.n_samples, a.sample_bs, a.steps = 0.1, '8,16,32', 1, 32, 64, 64, 3
    out = Path(a.out + ('_smoke' if a.smoke else '')); out.mkdir(parents=True, exist_ok=True)
    bf16 = fast_bf16(a.device)
    dd = load_fashion_mnist()
    (xtr, _), (xte, yte) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    xtr, xte = fmnist_32(xtr), fmnist_32(xte)
    if a.smoke: xtr, xte, yte = xtr[:512], xte[:1000], yte[:1000]
    ie = ImageEval(fmnist_classifier(head=False), DataLoaders([], TensorLoader(xte, yte, 1000, tfm=None)), check_range=not a.smoke)
    res = dict(args=vars(a), torch=torch.__version__, rows={})
    for name, make in models(a).items():
        n_par = sum(p.numel() for p in make().parameters())
        print(f'{name}: {n_par:,} parameters, training {a.minutes} min', flush=True)
        net, steps, secs = train(make, a, xtr, bf16)
        t = time.perf_counter()
        s = draw(KarrasDenoiser(Autocast(net, torch.bfloat16 if bf16 else None), a.sig_data), a.n_samples, a.sample_bs, a.steps, a.seed + 1000, a.device)
        dt = time.perf_counter() - t
        r = dict(params=n_par, steps=steps, epochs=steps * a.bs / len(xtr), train_s=secs, fid=ie.fid(s), kid=ie.kid(s), samples_per_s=a.n_samples / dt)
        res['rows'][name] = r
        print(f"  {steps} steps ({r['epochs']:.2f} epochs) in {secs / 60:.1f} min; DPM++ 2M {a.steps} steps: FID {r['fid']:.2f} KID {r['kid']:.4f} "
              f"({r['samples_per_s']:.1f} samples/s)", flush=True)
        atomic_write(out / 'results.json', json.dumps(res, indent=2))
    print(f'\n| model | parameters | training steps (bs {a.bs}) | DPM++ 2M {a.steps}: FID | KID |\n|---|---|---|---|---|')
    for name, r in res['rows'].items(): print(f"| {name} | {r['params']:,} | {r['steps']} | {r['fid']:.2f} | {r['kid']:.4f} |")


if __name__ == '__main__':
    main()
