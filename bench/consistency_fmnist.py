"""Consistency models on Fashion-MNIST (32x32): train with CT (or CD from the shipped diffusion model), then FID/KID at 1, 2, 4 evaluations.

Training: `miniai.consistency.ConsistencyTraining` (Song et al. 2023: Karras levels, the boundary-condition scalings,
an EMA target network whose decay μ(k) follows N(k), N(k) growing from s0 to s1+1 over the K steps) on all 60,000
training images (`miniai.fid.fmnist_32`: zero-padded to 32x32, in [-1, 1]), `EmbUNetModel` behind `LogSigmaCond`,
AdamW with a one-cycle schedule over K steps, bf16 autocast where it is fast. K is `--steps`, or (`--steps 0`) what
`--minutes` allows at the speed measured on a few warm-up steps; training also stops at the `--minutes` deadline.
`--mode cd`: `ConsistencyDistillation` from the shipped EDM model (`miniai.diffusion.edm.load_denoiser`), one Heun
step per pair, N = 18 levels, the student initialised with the teacher's weights (same architecture).

The paper's schedule (s0=2, s1=150, mu0=0.9) is made for K=800k steps. Squeezed into the few hundred steps a CPU hour
allows, it fails: N passes 16 after 1% of the steps and the target's decay μ reaches 0.998, so the target network
barely leaves its random initialisation and the model learns to match it (first CPU run, 444 steps: outputs near 0
at σ=80, KID(512) 8-10 at 2 evaluations). With s1=20, mu0=0 and uniform levels (45 CPU-min, 3,106 steps) it still
collapses, to a constant at large σ. The defaults here follow Song & Dhariwal's improved CT (2023): mu0=0 (the target
is the model itself without gradient), pseudo-Huber loss, log-normal levels, 1/(t_{n+1}-t_n) weighting, s0=10, s1=80;
at 45 CPU-min they are better (FID 174 at 2 evaluations against 249) but still not usable: a GPU's budget is needed.

Before sampling, a profile of one evaluation per noise level on 256 test images: the mean squared error of
f(x0 + σz, σ) against x0 (beside σ², the error of returning the input) and f's spread over the batch, which shows a
collapsed model (outputs that no longer depend on the input) at once.

Sampling: the weights of a separate `EMA` (decay `--ema`, warm-up) with `sample_consistency`: 1 evaluation at σ=80;
2 at [80, τ] with τ picked from `--tau-grid` by KID on 512 samples against the 10,000 test images; 4 at `--sigmas4`.
FID/KID of 2,048 samples against the 10,000 test images on the shipped classifier's features (`miniai.fid.ImageEval`),
the README's protocol. `--baseline` adds DPM++ 2M on the shipped diffusion model at the same numbers of evaluations.

Run (2-core CPU):  .venv/bin/python bench/consistency_fmnist.py --mode ct --minutes 60
                   .venv/bin/python bench/consistency_fmnist.py --mode cd --minutes 60
Evaluate saved weights again: --eval-only (reads --out/model.safetensors)
Smoke test (seconds): --smoke
Measured figures and their commands: bench/results_later.md
"""
import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from miniai.accel import MixedPrecision, fast_bf16
from miniai.consistency import ConsistencyModel, ConsistencyTraining, ConsistencyDistillation, sample_consistency, pseudo_huber
from miniai.datasets import DataLoaders, TensorLoader, dataset_tensors, load_fashion_mnist
from miniai.diffusion import EmbUNetModel, sample_dpmpp_2m, sigmas_karras
from miniai.diffusion.edm import LogSigmaCond, load_denoiser
from miniai.ema import EMA
from miniai.fid import ImageEval, fmnist_32, fmnist_classifier
from miniai.learner import CancelFitException, Callback, DeviceCB, Learner, TrainCB
from miniai.sgd import BatchSchedCB
from miniai.utils import atomic_write
from diffusion_ablation import Autocast   # bench/ is the script's folder, so its sibling imports


class Deadline(Callback):
    "Stop the fit at a wall-clock deadline (seconds since the epoch, `time.time()`)."
    def __init__(self, t): self.t = t
    def before_batch(self, learn):
        if learn.training and time.time() > self.t: raise CancelFitException()


class LossLog(Callback):
    "Print the mean training loss every `every` steps (the run's progress in its log)."
    order = 90
    def __init__(self, every=50): self.every = every
    def before_fit(self, learn): self.acc, self.n, self.t0, self.curve = 0., 0, time.perf_counter(), []
    def after_batch(self, learn):
        if not learn.training or learn.loss is None: return
        self.acc += float(learn.loss.detach()); self.n += 1
        if self.n % self.every == 0:
            self.curve.append(round(self.acc / self.every, 5))
            print(f'  step {self.n}: loss {self.acc / self.every:.4f} ({(time.perf_counter() - self.t0) / self.n:.2f} s/step)', flush=True)
            self.acc = 0.


def make_model(a, teacher):
    nfs = tuple(int(o) for o in a.nfs.split(','))
    if teacher is not None:   # CD: the student is the teacher's architecture, started from its weights
        unet = EmbUNetModel(**{k: v for k, v in teacher.config.items() if k in ('in_channels', 'out_channels', 'nfs', 'num_layers', 'attn_chans', 'attn_start')})
        unet.load_state_dict(teacher.model.model.state_dict())
    else: unet = EmbUNetModel(1, 1, nfs=nfs, num_layers=a.num_layers, attn_chans=a.attn_chans, attn_start=a.attn_start)
    return ConsistencyModel(LogSigmaCond(unet), sig_data=a.sig_data)


def train(a, xtr, teacher, bf16):
    torch.manual_seed(a.seed)
    model = make_model(a, teacher).to(a.device)
    print(f'{a.mode}: {sum(p.numel() for p in model.parameters()):,} parameters, bf16 {bf16}', flush=True)
    g = torch.Generator().manual_seed(a.seed)
    dls = DataLoaders(TensorLoader(xtr, torch.zeros(len(xtr)), a.bs, shuffle=True, drop_last=True, generator=g, tfm=None), [])
    gen = torch.Generator().manual_seed(a.seed + 1)
    step_cb = MixedPrecision('bf16') if bf16 else TrainCB()
    loss = pseudo_huber if a.loss == 'huber' else F.mse_loss
    opt = partial(torch.optim.AdamW, eps=1e-6, weight_decay=0.)
    deadline = time.time() + a.minutes * 60
    K = a.steps
    if not K:   # calibrate: time a few steps of the same training on a throwaway copy
        probe = make_model(a, teacher).to(a.device)
        cm = (ConsistencyDistillation(teacher, generator=gen) if teacher is not None else ConsistencyTraining(1000, generator=gen))
        lp = Learner(probe, dls, loss, lr=1e-4, opt_func=opt, cbs=[DeviceCB(a.device), cm, MixedPrecision('bf16') if bf16 else TrainCB()])
        class Count(Callback):
            def before_fit(self, learn): self.n, self.t = 0, None
            def after_batch(self, learn):
                self.n += 1
                if self.n == 2: self.t = time.perf_counter()
                if self.n == 6: raise CancelFitException()
        c = Count()
        lp.fit(1, valid=False, cbs=c)
        dt = (time.perf_counter() - c.t) / 4
        K = max(10, int((deadline - time.time()) / dt))
        print(f'calibration: {dt:.2f} s/step -> K = {K} steps ({K * a.bs / len(xtr):.1f} epochs)', flush=True)
    cm = (ConsistencyDistillation(teacher, n=a.cd_n, mu=a.cd_mu, total_steps=K, generator=gen) if teacher is not None
          else ConsistencyTraining(K, s0=a.s0, s1=a.s1, mu0=a.mu0, generator=gen, levels=a.levels, p_mean=a.p_mean, p_std=a.p_std,
                                   weighting=None if a.weighting == 'none' else a.weighting))
    ema = EMA(a.ema)
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=a.lr, total_steps=K + 1, pct_start=0.1)
    n_epochs = math.ceil(K / len(dls.train))
    class StopAtK(Callback):
        order = 100
        def after_batch(self, learn):
            if cm.n >= K: raise CancelFitException()
    ll = LossLog()
    learn = Learner(model, dls, loss, lr=a.lr, opt_func=opt,
                    cbs=[DeviceCB(a.device), cm, ema, step_cb, BatchSchedCB(sched), Deadline(deadline), StopAtK(), ll])
    t = time.perf_counter()
    learn.fit(n_epochs, valid=False)
    dt = time.perf_counter() - t
    print(f'trained {cm.n} of {K} steps ({cm.n * a.bs / len(xtr):.2f} epochs) in {dt / 60:.1f} min; N at the end {cm.num_steps()}, '
          f'target decay {cm.current_decay():.4f}', flush=True)
    return ema.ema_model.eval(), dict(steps=cm.n, K=K, train_minutes=dt / 60, final_N=cm.num_steps(), loss_every_50=ll.curve)


@torch.no_grad()
def sigma_profile(model, x0, sigmas, seed, device='cpu'):
    "Per noise level: the mean squared error of f(x0 + σz, σ) against x0 (identity's is σ²), and f's spread over the batch (near 0: collapsed)."
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x0, z, rows = x0.to(device), z.to(device), []
    for s in sigmas:
        y = model(x0 + s * z, torch.full((len(x0),), float(s), device=device)).float()
        rows.append(dict(sigma=s, mse=float(((y - x0)**2).mean()), batch_std=float(y.std(0).mean()), mean=float(y.mean())))
    return rows


@torch.no_grad()
def draw(model, sigmas, n, bs, seed, consistency=True, device='cpu'):
    "n samples from the same starting noise (seed) for every row; fresh noise from seed+1."
    g, gs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    out = []
    for i in range(0, n, bs):
        x = (torch.randn(min(bs, n - i), 1, 32, 32, generator=g) * float(sigmas[0])).to(device)
        if consistency: y = sample_consistency(model, x, sigmas, generator=gs, sigma_min=0.002)
        else: y = sample_dpmpp_2m(model, x, sigmas)
        out.append(y.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--mode', default='ct', choices=['ct', 'cd'])
    p.add_argument('--minutes', type=float, default=60.)
    p.add_argument('--steps', type=int, default=0, help='K training steps (0: as many as --minutes allows)')
    p.add_argument('--nfs', default='16,32,64,128'); p.add_argument('--num-layers', type=int, default=1)
    p.add_argument('--attn-chans', type=int, default=8); p.add_argument('--attn-start', type=int, default=3)
    p.add_argument('--bs', type=int, default=128); p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--loss', default='huber', choices=['huber', 'l2'])
    p.add_argument('--s0', type=int, default=10); p.add_argument('--s1', type=int, default=80, help="the paper's 150 (1,280 in improved CT) is for 400k-800k steps")
    p.add_argument('--mu0', type=float, default=0., help="the paper's 0.9 is for 800k steps; 0: the target is the model itself, without gradient (Song & Dhariwal 2023)")
    p.add_argument('--levels', default='lognormal', choices=['uniform', 'lognormal'], help="CT: how the pair of levels is drawn (lognormal: Song & Dhariwal 2023)")
    p.add_argument('--p-mean', type=float, default=-1.1); p.add_argument('--p-std', type=float, default=2., help='the log-normal levels: mean and std of ln σ')
    p.add_argument('--weighting', default='inv_gap', choices=['none', 'inv_gap'], help="CT: weight each pair's loss by 1/(t_{n+1} - t_n) (Song & Dhariwal 2023; needs --loss huber)")
    p.add_argument('--cd-n', type=int, default=18); p.add_argument('--cd-mu', type=float, default=0.95)
    p.add_argument('--ema', type=float, default=0.999)
    p.add_argument('--sig-data', type=float, default=0.5)
    p.add_argument('--tau-grid', default='0.3,0.6,1.2,2.5,5')
    p.add_argument('--sigmas4', default='80,5,1.2,0.4')
    p.add_argument('--n-samples', type=int, default=2048); p.add_argument('--sample-bs', type=int, default=512)
    p.add_argument('--baseline', action='store_true', help='also DPM++ 2M on the shipped diffusion model at 1, 2, 4 evaluations')
    p.add_argument('--eval-only', action='store_true')
    p.add_argument('--out', default='bench_out/consistency')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--device', default='cpu', help='cpu or cuda (with a GPU: --device cuda --threads 0)')
    p.add_argument('--threads', type=int, default=1, help='torch threads (1: on a CPU shared with other jobs, more threads are much slower)')
    p.add_argument('--smoke', action='store_true')
    a = p.parse_args()
    if a.mode == 'ct' and a.loss == 'l2' and a.weighting != 'none': p.error('--weighting inv_gap needs --loss huber (F.mse_loss takes no per-item weight); add --weighting none')
    if a.threads: torch.set_num_threads(a.threads)
    if a.smoke: a.minutes, a.steps, a.nfs, a.bs, a.n_samples, a.sample_bs, a.tau_grid = 2., 6, '8,16', 32, 64, 64, '0.6,2'
    out = Path(a.out + ('_smoke' if a.smoke else '')); out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bf16 = fast_bf16(a.device)
    dd = load_fashion_mnist()
    (xtr, _), (xte, yte) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    xtr, xte = fmnist_32(xtr), fmnist_32(xte)
    if a.smoke: xtr, xte, yte = xtr[:512], xte[:1000], yte[:1000]
    teacher = load_denoiser(device=a.device) if a.mode == 'cd' or a.baseline else None
    res = dict(args=vars(a), torch=torch.__version__, threads=torch.get_num_threads())
    def log(): atomic_write(out / 'results.json', json.dumps(res, indent=2))
    from safetensors.torch import save_file, load_file
    if a.eval_only:
        model = make_model(a, teacher if a.mode == 'cd' else None)
        model.load_state_dict(load_file(str(out / 'model.safetensors')))
        model.to(a.device).eval()
    else:
        model, info = train(a, xtr, teacher if a.mode == 'cd' else None, bf16)
        res['train'] = info
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(out / 'model.safetensors'))
        log()
    ie = ImageEval(fmnist_classifier(head=False), DataLoaders([], TensorLoader(xte, yte, 1000, tfm=None)), check_range=not a.smoke)
    ie.check_range = False   # checked on the real images; generated ones are clamped to [-1, 1], and an untrained model's may span less
    dr = lambda *args, **kw: draw(*args, device=a.device, **kw)
    reals = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(a.seed))[:a.n_samples]]
    res['reals'] = dict(fid=ie.fid(reals), kid=ie.kid(reals))
    print(f"reals (floor): FID {res['reals']['fid']:.2f} KID {res['reals']['kid']:.4f}", flush=True)
    net = Autocast(model, torch.bfloat16 if bf16 else None)
    net.sigma_min = 0.002
    res['sigma_profile'] = sigma_profile(net, xte[:256], [0.01, 0.05, 0.2, 0.6, 1.2, 2.5, 5., 10., 20., 80.], a.seed + 3, a.device)
    print(f"one evaluation per noise level, 256 test images (data: batch std {float(xte[:256].std(0).mean()):.3f}):\n"
          "| σ | MSE(f, x0) | σ² (no denoising) | f's std over the batch |\n|---|---|---|---|", flush=True)
    for r in res['sigma_profile']: print(f"| {r['sigma']:g} | {r['mse']:.4f} | {r['sigma']**2:.4g} | {r['batch_std']:.3f} |", flush=True)
    log()
    # 2 evaluations: pick tau by KID on 512 samples (a different noise seed from the final rows)
    grid = {}
    for tau in (float(v) for v in a.tau_grid.split(',')):
        s = dr(net, [80., tau], min(512, a.n_samples), a.sample_bs, a.seed + 7)
        grid[tau] = ie.kid(s)
        print(f'  tau {tau}: KID(512) {grid[tau]:.4f}', flush=True)
    tau = min(grid, key=grid.get)
    res['tau_grid_kid512'] = grid
    rows = {1: [80.], 2: [80., tau], 4: [float(v) for v in a.sigmas4.split(',')]}
    res['rows'] = {}
    for nfe, sig in rows.items():
        t = time.perf_counter()
        s = dr(net, sig, a.n_samples, a.sample_bs, a.seed + 1000)
        dt = time.perf_counter() - t
        res['rows'][f'cm{nfe}'] = dict(evals=nfe, sigmas=sig, fid=ie.fid(s), kid=ie.kid(s), samples_per_s=a.n_samples / dt)
        print(f"consistency {a.mode}, {nfe} evals {sig}: FID {res['rows'][f'cm{nfe}']['fid']:.2f} KID {res['rows'][f'cm{nfe}']['kid']:.4f} "
              f"({a.n_samples / dt:.0f} samples/s)", flush=True)
        log()
        if nfe == 1:
            from miniai.datasets import show_images
            import matplotlib.pyplot as plt
            show_images(((s[:32] + 1) / 2).clamp(0, 1), nrows=4, imsize=1)
            plt.savefig(out / 'samples_1step.png'); plt.close('all')
    if a.baseline:
        den = Autocast(teacher, torch.bfloat16 if bf16 else None)
        for nfe in (1, 2, 4):
            s = dr(den, sigmas_karras(nfe, 0.002, 80., device=a.device), a.n_samples, a.sample_bs, a.seed + 1000, consistency=False)
            res['rows'][f'dpmpp2m{nfe}'] = dict(evals=nfe, fid=ie.fid(s), kid=ie.kid(s))
            print(f"shipped diffusion model, DPM++ 2M {nfe} steps: FID {res['rows'][f'dpmpp2m{nfe}']['fid']:.2f}", flush=True)
            log()
    print(f"\n| model | model evals | FID ({a.n_samples}) | KID |\n|---|---|---|---|")
    for k, r in res['rows'].items():
        print(f"| {'consistency ' + a.mode if k.startswith('cm') else 'shipped EDM, DPM++ 2M'} | {r['evals']} | {r['fid']:.2f} | {r['kid']:.4f} |")
    print(f"reals floor FID {res['reals']['fid']:.2f}; total {(time.perf_counter() - t0) / 60:.1f} min; results -> {out / 'results.json'}")


if __name__ == '__main__':
    main()
