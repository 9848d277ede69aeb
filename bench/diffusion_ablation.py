"""Diffusion training recipes on Fashion-MNIST at a fixed wall-clock budget each: an ablation table, then a final model.

Each recipe trains the same `EmbUNetModel` for `--train-seconds` of wall time (the learning rate follows a one-cycle
schedule over that time, so every recipe gets a complete schedule), then samples `--n-samples` images per sampler row
from the same noise for each of `--seeds` sampling seeds and reports FID/KID against the 10,000 test images on the
features of the shipped classifier (`miniai.fid`), as mean ± half the spread over the seeds.

Recipes (each row changes one thing):
  eps             ε-prediction on the linear DDPM schedule, MSE (the README's CPU table used this)
  eps_ema         + an exponential moving average of the weights (`miniai.ema.EMA`), sampled with the EMA weights
  eps_minsnr_ema  + Min-SNR-5 loss weighting (Hang et al. 2023: weight min(SNR, 5)/SNR per item)
  edm             EDM training (Karras et al. 2022): log-normal σ, preconditioning, EDM loss weighting, c_noise = ln σ / 4
  edm_ema         + EMA
ε-models are sampled through `EpsDenoiser` (Karras sigmas between the schedule's σ_min and σ_max, and DDIM/DDPM on the
discrete schedule); EDM models through `KarrasDenoiser` with σ in [0.002, 80] (EDM's range).

`--final RECIPE` (or `auto`: the recipe with the best DPM++ 2M 10-step FID) then trains `--final-nfs` etc. for
`--final-seconds`, evaluates every row, and writes its EMA weights as float16 safetensors plus a JSON config to `--out`
(the weights `miniai-demo` ships). Results go to `--out/results.json` after every row, so a run cut short keeps them.

GPU (the default sizes; about 8 minutes on one H100/H200):
    python bench/diffusion_ablation.py --device cuda
2-core CPU with AMX (bf16), the ≤ 70-minute goal of issue #14 (no ablation, one recipe):
    .venv/bin/python bench/diffusion_ablation.py --recipes none --final edm_ema --final-seconds 4200 --n-samples 2048
Smoke test (seconds): .venv/bin/python bench/diffusion_ablation.py --smoke
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from miniai.accel import MixedPrecision
from miniai.datasets import DataLoaders, TensorLoader, DEBIAN_FMNIST, read_fmnist_split, load_fashion_mnist, dataset_tensors
from miniai.diffusion import (EmbUNetModel, EpsDenoiser, KarrasDenoiser, ddim_sample, ddpm_sample, linear_sched, sample_dpmpp_2m,
                              sample_euler, sample_heun, sigmas_karras)
from miniai.diffusion.edm import EDMCB, LogSigmaCond, data_sigma, save_denoiser
from miniai.diffusion.train import DDPMCB
from miniai.ema import EMA
from miniai.fid import ImageEval, fmnist_32, fmnist_classifier
from miniai.learner import CancelFitException, Callback, DeviceCB, Learner, MetricsCB, TrainCB
from miniai.utils import atomic_write

RECIPES = ['eps', 'eps_ema', 'eps_minsnr_ema', 'edm', 'edm_ema']
ROWS = {  # name: (label, sampler, steps); NFE is counted, not assumed
    'dpmpp2m10': ('DPM++ 2M', sample_dpmpp_2m, 10), 'dpmpp2m20': ('DPM++ 2M', sample_dpmpp_2m, 20),
    'heun5': ('Heun', sample_heun, 5), 'heun10': ('Heun', sample_heun, 10), 'euler50': ('Euler', sample_euler, 50),
    'ddim25': ('DDIM', 'ddim', 25), 'ddim50': ('DDIM', 'ddim', 50), 'ddpm1000': ('DDPM', 'ddpm', 1000)}
EPS_ONLY = {'ddim25', 'ddim50', 'ddpm1000'}


def sync(device):
    if str(device).startswith('cuda'): torch.cuda.synchronize()


class TimedOneCycle(Callback):
    "One-cycle lr (cosine up from lr/div over `pct` of the budget, cosine down to lr/div_final) over `seconds` of `clock`; then stop."
    order = 5
    def __init__(self, seconds, lr, pct=0.25, div=25., div_final=1e4, clock=time.perf_counter):
        self.seconds, self.lr, self.pct, self.div, self.div_final, self.clock = seconds, lr, pct, div, div_final, clock
    def before_fit(self, learn): self.t0, self.w0, self.steps = self.clock(), time.perf_counter(), 0
    def lr_at(self, f):
        "The lr at fraction `f` of the budget."
        lo, hi, end = self.lr / self.div, self.lr, self.lr / self.div_final
        if f < self.pct: return lo + (hi - lo) * (1 - math.cos(math.pi * f / self.pct)) / 2
        g = (f - self.pct) / (1 - self.pct)
        return end + (hi - end) * (1 + math.cos(math.pi * min(g, 1.))) / 2
    def before_batch(self, learn):
        if not learn.training: return
        f = (self.clock() - self.t0) / self.seconds
        if f >= 1: raise CancelFitException()
        for g in learn.opt.param_groups: g['lr'] = self.lr_at(f)
        self.steps += 1
    def cleanup_fit(self, learn): self.used, self.wall = self.clock() - self.t0, time.perf_counter() - self.w0


class MinSNR(Callback):
    "Min-SNR-γ loss weights (Hang et al. 2023) for ε-prediction: add w = min(SNR(t), γ)/SNR(t) to each DDPM batch."
    order = DDPMCB.order + 1
    def __init__(self, abar, gamma=5.):
        snr = abar / (1 - abar)
        self.w = (snr.clamp(max=gamma) / snr).float()
    def before_batch(self, learn):
        (xt, t), eps = learn.batch
        learn.batch = ((xt, t), eps, self.w.to(t.device)[t])


def weighted_mse(preds, target, w):
    "Mean over items of w * (per-item MSE)."
    return ((preds.float() - target.float())**2).mean(tuple(range(1, preds.ndim))).mul(w).mean()


class Autocast(torch.nn.Module):
    "Run `model` under `torch.autocast(dtype)` and return float32."
    def __init__(self, model, dtype): super().__init__(); self.model, self.dtype = model, dtype
    def forward(self, x, *args, **kwargs):
        if self.dtype is None: return self.model(x, *args, **kwargs)
        with torch.autocast(x.device.type, dtype=self.dtype): return self.model(x, *args, **kwargs).float()


class Counted(torch.nn.Module):
    "Count the calls to `model`."
    def __init__(self, model): super().__init__(); self.model, self.n = model, 0
    def forward(self, *args, **kwargs):
        self.n += 1
        return self.model(*args, **kwargs)


def load_data(a):
    "Training and test images as (N,1,32,32) floats in [-1, 1], and the test labels."
    folder = a.data or (DEBIAN_FMNIST if DEBIAN_FMNIST.is_dir() else None)
    if folder is not None:
        (xtr, _), (xte, yte) = (read_fmnist_split(folder, s) for s in ('train', 'test'))
        xtr, xte, yte = torch.from_numpy(xtr.copy()), torch.from_numpy(xte.copy()), torch.from_numpy(yte.astype('int64'))
    else:
        dd = load_fashion_mnist()
        (xtr, _), (xte, yte) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    return fmnist_32(xtr), fmnist_32(xte), yte


def make_unet(nfs, num_layers, attn_chans, attn_start):
    return EmbUNetModel(1, 1, nfs=nfs, num_layers=num_layers, attn_chans=attn_chans, attn_start=attn_start)


def train(recipe, cfg, a, xtr, sched, sig_data, seconds, seed):
    "Train `recipe` for `seconds`; returns (network to sample, the raw network, steps, images/s)."
    torch.manual_seed(seed)
    unet = make_unet(*cfg).to(a.device)
    if a.channels_last: unet = unet.to(memory_format=torch.channels_last)
    edm = recipe.startswith('edm')
    net = LogSigmaCond(unet) if edm else unet
    g = torch.Generator().manual_seed(seed)
    dls = DataLoaders(TensorLoader(xtr, torch.zeros(len(xtr), device=xtr.device), a.bs, shuffle=True, drop_last=True, generator=g, tfm=None),
                      [])
    gn = torch.Generator(device=a.device).manual_seed(seed + 1)
    cbs = [EDMCB(sig_data, generator=gn) if edm else DDPMCB(sched, generator=gn)]
    loss = F.mse_loss
    if 'minsnr' in recipe:
        cbs.append(MinSNR(sched.abar, 5.))
        loss = weighted_mse
    ema = EMA(a.ema_decay) if recipe.endswith('_ema') else None
    if ema is not None: cbs.append(ema)
    timer = TimedOneCycle(seconds, a.lr)
    cbs += [timer, MetricsCB(), MixedPrecision(a.amp) if a.amp != 'no' else TrainCB()]
    fused = {'fused': True} if str(a.device).startswith('cuda') else {}
    opt = lambda ps, lr: torch.optim.AdamW(ps, lr=lr, eps=1e-5, weight_decay=a.wd, **fused)
    learn = Learner(net, dls, loss, lr=a.lr, opt_func=opt, cbs=cbs)
    t = time.perf_counter()
    learn.fit(10**6, valid=False)
    dt = time.perf_counter() - t
    n_img = timer.steps * a.bs
    final = ema.ema_model if ema is not None else learn.model
    print(f'  {recipe}: {timer.steps} steps ({n_img / len(xtr):.1f} epochs) in {dt:.0f}s, {n_img / dt:.0f} img/s, '
          f'last loss {learn.history[-1]["loss"] if learn.history else "-"}', flush=True)
    return final.eval(), timer.steps, n_img / dt


def denoiser_for(recipe, net, sched, sig_data, amp):
    "A counted denoiser (x, sigma) -> x0_hat, its sigma range, and the counted raw network (for DDIM/DDPM)."
    counted = Counted(Autocast(net, None if amp == 'no' else getattr(torch, {'bf16': 'bfloat16', 'fp16': 'float16'}[amp])))
    dev = next(net.parameters()).device
    if recipe.startswith('edm'): return KarrasDenoiser(counted, sig_data), (0.002, 80.), counted
    den = EpsDenoiser(counted, sched).to(dev)
    return den, (float(den.sigma_min), float(den.sigma_max)), counted


@torch.no_grad()
def draw(row, den, counted, sig_range, sched, n, bs, seed, device):
    "n samples with sampler `row`, from noise seeded by `seed`."
    _, kind, steps = ROWS[row]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, bs):
        m = min(bs, n - i)
        x = torch.randn(m, 1, 32, 32, generator=g).to(device)
        gs = torch.Generator(device=device).manual_seed(seed + 1 + i)
        if kind == 'ddpm': y = ddpm_sample(counted, x, sched, generator=gs)
        elif kind == 'ddim':
            ts = torch.arange(steps - 1, -1, -1) * (len(sched.abar) // steps)
            y = ddim_sample(counted, x, sched, ts)
        else:
            sigmas = sigmas_karras(steps, sigma_min=sig_range[0], sigma_max=sig_range[1], device=device)
            y = kind(den, x * sigmas[0], sigmas)
        out.append(y.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def evaluate(recipe, net, rows, a, ie, sched, sig_data, deadline, log, res):
    "FID/KID (mean and spread over seeds) and samples/s of each row into `res`; stops starting rows past `deadline`."
    den, sig_range, counted = denoiser_for(recipe, net, sched, sig_data, a.amp)
    for row in rows:
        if row in EPS_ONLY and recipe.startswith('edm'): continue
        if time.perf_counter() > deadline:
            print(f'  skipping {row}: out of time', flush=True)
            continue
        n = a.n_samples if row != 'ddpm1000' else a.ddpm_samples
        fids, kids, secs = [], [], 0.
        seeds = a.seeds if row != 'ddpm1000' else 1
        for s in range(seeds):
            counted.n = 0
            sync(a.device); t = time.perf_counter()
            samp = draw(row, den, counted, sig_range, sched, n, a.sample_bs, a.seed + 1000 * (s + 1), a.device)
            sync(a.device); secs += time.perf_counter() - t
            fids.append(ie.fid(samp)); kids.append(ie.kid(samp))
        nfe = counted.n / math.ceil(n / a.sample_bs)
        r = dict(label=ROWS[row][0], steps=ROWS[row][2], nfe=int(round(nfe)), n=n, seeds=seeds,
                 fid=sum(fids) / len(fids), fid_spread=(max(fids) - min(fids)) / 2, kid=sum(kids) / len(kids),
                 samples_per_s=n * seeds / secs)
        res[row] = r
        print(f"  {recipe} {row}: NFE {r['nfe']} FID {r['fid']:.2f} ± {r['fid_spread']:.2f} KID {r['kid']:.4f} "
              f"{r['samples_per_s']:.1f} samples/s", flush=True)
        log()


def save_weights(net, recipe, sig_data, out, extra):
    "The network's weights as float16 safetensors and its config as JSON, in `out` (`miniai.diffusion.edm.save_denoiser`)."
    unet = net.model if isinstance(net, LogSigmaCond) else net
    save_denoiser(unet, out / 'fmnist_diffusion.safetensors', 'edm' if recipe.startswith('edm') else 'eps', sig_data,
                  recipe=recipe, schedule='linear 1e-4..0.02, 1000 steps',
                  data='Fashion-MNIST padded to 32x32, in [-1, 1] (miniai.fid.fmnist_32)', **extra)


def table(results):
    lines = ['| recipe | sampler | steps | model evals | FID (mean ± half-spread) | KID | samples/s |', '|---|---|---|---|---|---|---|']
    for name, r in results.items():
        if name.startswith('_'): continue
        for row, v in r.get('rows', {}).items():
            lines.append(f"| {name} | {v['label']} | {v['steps']} | {v['nfe']} | {v['fid']:.2f} ± {v['fid_spread']:.2f} | {v['kid']:.4f} | {v['samples_per_s']:.0f} |")
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--data', default=None, help='folder with the Fashion-MNIST IDX files (default: Debian\'s, else load_fashion_mnist)')
    p.add_argument('--recipes', default=','.join(RECIPES), help='comma-separated, or none')
    p.add_argument('--train-seconds', type=float, default=40., help='training time per ablation recipe')
    p.add_argument('--nfs', default='16,32,64,128'); p.add_argument('--num-layers', type=int, default=1)
    p.add_argument('--attn-chans', type=int, default=8); p.add_argument('--attn-start', type=int, default=3)
    p.add_argument('--final', default='auto', help='recipe for the final model, auto (best ablation row), or none')
    p.add_argument('--final-seconds', type=float, default=150.)
    p.add_argument('--final-nfs', default='32,64,128'); p.add_argument('--final-num-layers', type=int, default=2)
    p.add_argument('--final-attn-chans', type=int, default=8); p.add_argument('--final-attn-start', type=int, default=1)
    p.add_argument('--ablation-rows', default='dpmpp2m10,dpmpp2m20')
    p.add_argument('--final-rows', default='dpmpp2m10,dpmpp2m20,heun5,heun10,euler50,ddim25,ddim50,ddpm1000')
    p.add_argument('--bs', type=int, default=256); p.add_argument('--lr', type=float, default=4e-3)
    p.add_argument('--wd', type=float, default=0.); p.add_argument('--ema-decay', type=float, default=0.999)
    p.add_argument('--amp', default='bf16', choices=['bf16', 'fp16', 'no'])
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--n-samples', type=int, default=2048); p.add_argument('--ddpm-samples', type=int, default=2048)
    p.add_argument('--seeds', type=int, default=2); p.add_argument('--sample-bs', type=int, default=1024)
    p.add_argument('--budget-seconds', type=float, default=0., help='stop starting new rows after this many seconds in all (0: no limit)')
    p.add_argument('--out', default='bench_out/diffusion')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--threads', type=int, default=0)
    p.add_argument('--smoke', action='store_true', help='tiny sizes, to check the script end to end in seconds')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    if a.smoke:
        a.train_seconds, a.final_seconds, a.n_samples, a.ddpm_samples, a.seeds, a.sample_bs = 4., 4., 64, 16, 2, 64
        a.final_nfs, a.final_num_layers, a.final_attn_start, a.nfs, a.bs = '8,16,32', 1, 2, '8,16,32,32', 32
        a.final_rows = 'dpmpp2m10,heun5,ddim25,ddpm1000'
    t_start = time.perf_counter()
    deadline = t_start + a.budget_seconds if a.budget_seconds else math.inf
    out = Path(a.out)
    dev = torch.cuda.get_device_name() if str(a.device).startswith('cuda') else f'CPU ({torch.get_num_threads()} threads)'
    results = {'_meta': dict(device=dev, torch=torch.__version__, args=vars(a))}
    def log(): atomic_write(out / 'results.json', json.dumps(results, indent=2))

    xtr, xte, yte = load_data(a)
    if a.smoke: xtr, xte, yte = xtr[:2048], xte[:1024], yte[:1024]
    xtr = xtr.to(a.device)
    sig_data = data_sigma(xtr)
    sched = linear_sched(betamax=0.02, n_steps=1000)
    ie = ImageEval(fmnist_classifier(head=False, device=a.device), DataLoaders([], TensorLoader(xte, yte, 1000, tfm=None)),
                   cbs=[DeviceCB(a.device)])
    print(f'{dev}, torch {torch.__version__}; {len(xtr):,} training images, sigma_data {sig_data:.3f}', flush=True)
    reals = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(a.seed))[:a.n_samples]].float().cpu()
    results['_reals'] = dict(fid=ie.fid(reals), kid=ie.kid(reals), n=len(reals))
    print(f"reals (floor): FID {results['_reals']['fid']:.2f} KID {results['_reals']['kid']:.4f}", flush=True)
    log()

    cfg = (tuple(int(o) for o in a.nfs.split(',')), a.num_layers, a.attn_chans, a.attn_start)
    recipes = [] if a.recipes == 'none' else a.recipes.split(',')
    for r in recipes:
        if r not in RECIPES: p.error(f'unknown recipe {r}; choose from {RECIPES}')
    for r in recipes:
        if time.perf_counter() + a.train_seconds > deadline: print(f'skipping recipe {r}: out of time'); continue
        print(f'ablation: {r}, U-Net {cfg}', flush=True)
        net, steps, ips = train(r, cfg, a, xtr, sched, sig_data, a.train_seconds, a.seed)
        results[r] = dict(kind='ablation', steps=steps, img_per_s=ips, train_seconds=a.train_seconds,
                          params=sum(p.numel() for p in net.parameters()), config=list(map(str, cfg)))
        results[r]['rows'] = {}
        evaluate(r, net, a.ablation_rows.split(','), a, ie, sched, sig_data, deadline, log, results[r]['rows'])
        log()

    final = a.final
    if final == 'auto':
        scored = [(v['rows']['dpmpp2m10']['fid'], k) for k, v in results.items() if not k.startswith('_') and 'dpmpp2m10' in v.get('rows', {})]
        final = min(scored)[1] if scored else 'edm_ema'
    if final != 'none':
        fcfg = (tuple(int(o) for o in a.final_nfs.split(',')), a.final_num_layers, a.final_attn_chans, a.final_attn_start)
        print(f'final: {final}, U-Net {fcfg}, {a.final_seconds:.0f}s', flush=True)
        net, steps, ips = train(final, fcfg, a, xtr, sched, sig_data, a.final_seconds, a.seed)
        key = f'final:{final}'
        results[key] = dict(kind='final', steps=steps, img_per_s=ips, train_seconds=a.final_seconds,
                            params=sum(p.numel() for p in net.parameters()), config=list(map(str, fcfg)))
        out.mkdir(parents=True, exist_ok=True)
        save_weights(net, final, sig_data, out, dict(train_seconds=a.final_seconds, steps=steps, device=dev))
        log()
        results[key]['rows'] = {}
        evaluate(final, net, a.final_rows.split(','), a, ie, sched, sig_data, deadline, log, results[key]['rows'])
        log()
        conf = json.loads((out / 'fmnist_diffusion.json').read_text())   # the figures travel with the weights
        conf['fid'] = {k: dict(sampler=v['label'], steps=v['steps'], model_evals=v['nfe'], fid=round(v['fid'], 3),
                               fid_half_spread=round(v['fid_spread'], 3), kid=round(v['kid'], 5), n_samples=v['n'], seeds=v['seeds'])
                       for k, v in results[key]['rows'].items()}
        conf['fid_protocol'] = "miniai.fid.ImageEval on the shipped classifier's features, against the 10,000 test images; mean over the seeds"
        atomic_write(out / 'fmnist_diffusion.json', json.dumps(conf, indent=2))
    print(f"\n{dev}; FID/KID vs 10,000 test images on the shipped classifier's features; reals FID {results['_reals']['fid']:.2f}\n")
    print(table(results))
    print(f'\ntotal {time.perf_counter() - t_start:.0f}s; results -> {out / "results.json"}')


if __name__ == '__main__':
    main()
