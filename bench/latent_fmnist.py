"""Latent vs pixel diffusion on Fashion-MNIST 32x32 at the same training budget: training images/s, sampling images/s per
sampler, FID and KID at `--n-samples` samples, the reals floor and the autoencoder's reconstruction floor.

Every model is an `EmbUNetModel` trained the EDM way with an EMA of its weights (the recipe `bench/diffusion_ablation.py`
found best on this data: log-normal sigma, preconditioning, c_noise = ln(sigma)/4, AdamW, one-cycle lr), in bfloat16
autocast, for `--seconds` of *CPU time of this process* (one thread): on a 2-core machine shared with other jobs the
wall-clock time a process gets varies two- to threefold with the load, CPU time does not; the wall time is reported too.
  pixel     on images (1, 32, 32) in [-1, 1]  (the README's CPU model: nfs 16,32,64,128, attention at 4x4)
  latent_s  on scaled latents (4, 8, 8) of the shipped autoencoder (`miniai.vae.fmnist_vae`): nfs 32,64,128, 2 layers
  latent_m  the same with nfs 64,128,256, 1 layer (about the pixel model's training cost per image)
Latents come from a `miniai.latent.LatentCache` (encoded once; the encoding time is reported as a one-off cost), one
posterior sample per batch, scaled to unit variance. The autoencoder's own training (bench/train_fmnist_vae.py) is a
separate, one-off cost that this table does not include.

Sampling: DPM++ 2M (10 and 20 steps) and Heun (10 steps, 19 evaluations) on Karras sigmas in [0.002, 80], from the same
noise seed for every model; latent samples are decoded by the autoencoder (float32), and the decode time is part of
their samples/s. FID/KID against the 10,000 test images on the shipped classifier's features (`miniai.fid`).

Results are merged into `--out/results.json` after every row, so models can be run separately (`--models pixel`, then
`--models latent_s,latent_m`) and a run cut short keeps its rows; `--table` prints the table from that file (runs made
at the same time need separate `--out` folders: `--table --merge OTHER_OUT` joins them).

The table in bench/results_latent_fmnist.md (2-core CPU shared with other agents; the pixel model had 900 CPU-seconds,
latent_s 600 and, in a later run, 900; latent_m was not run):
    .venv/bin/python bench/latent_fmnist.py --models pixel --seconds 900
    .venv/bin/python bench/latent_fmnist.py --models latent_s --seconds 600 --out bench_out/latent_fmnist_latent
    .venv/bin/python bench/latent_fmnist.py --models latent_s --seconds 900 --rows dpmpp2m10 --out bench_out/latent_fmnist_latent900
    .venv/bin/python bench/latent_fmnist.py --table --merge bench_out/latent_fmnist_latent,bench_out/latent_fmnist_latent900
(the last run's key renamed latent_s -> latent_s_900 in its results.json, and its cache-read rows dropped, before merging)
Forward FLOPs per image of each model and of the autoencoder: .venv/bin/python bench/latent_fmnist.py --flops
Smoke test: .venv/bin/python bench/latent_fmnist.py --smoke
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from diffusion_ablation import Autocast, Counted, TimedOneCycle          # noqa: E402 (bench helpers)
from train_fmnist_vae import load_fmnist32                # noqa: E402

from miniai.accel import MixedPrecision
from miniai.datasets import DataLoaders, TensorLoader
from miniai.diffusion import EmbUNetModel, KarrasDenoiser, sigmas_karras
from miniai.diffusion.edm import EDMCB, LogSigmaCond, data_sigma
from miniai.ema import EMA
from miniai.fid import ImageEval, fmnist_classifier
from miniai.latent import LatentCache, LatentDiffusion, decode_latents, get_sampler
from miniai.learner import Learner, MetricsCB
from miniai.utils import atomic_write
from miniai.vae import fmnist_vae

MODELS = {'pixel': dict(space='pixel', nfs=(16, 32, 64, 128), num_layers=1, attn_chans=8, attn_start=3),
          'latent_s': dict(space='latent', nfs=(32, 64, 128), num_layers=2, attn_chans=32, attn_start=1),
          'latent_m': dict(space='latent', nfs=(64, 128, 256), num_layers=1, attn_chans=32, attn_start=1)}
ROWS = {'dpmpp2m10': ('DPM++ 2M', 'dpmpp_2m', 10), 'dpmpp2m20': ('DPM++ 2M', 'dpmpp_2m', 20), 'heun10': ('Heun', 'heun', 10)}


def train(name, loader, channels, sig_data, a):
    "Train model `name` on `loader` for `a.seconds` CPU seconds; returns the EMA network and its training stats."
    cfg = {k: v for k, v in MODELS[name].items() if k != 'space'}
    torch.manual_seed(a.seed)
    net = LogSigmaCond(EmbUNetModel(channels, channels, **cfg))
    ema, timer = EMA(a.ema_decay), TimedOneCycle(a.seconds, a.lr, clock=time.process_time)
    opt = lambda ps, lr: torch.optim.AdamW(ps, lr=lr, eps=1e-5, weight_decay=0.)
    learn = Learner(net, DataLoaders(loader, []), F.mse_loss, lr=a.lr, opt_func=opt,
                    cbs=[EDMCB(sig_data, generator=torch.Generator().manual_seed(a.seed + 1)), ema, timer, MetricsCB(), MixedPrecision('bf16')])
    learn.fit(10**6, valid=False)
    n_img = timer.steps * a.bs
    st = dict(params=sum(p.numel() for p in net.parameters()), steps=timer.steps, images=n_img, cpu_s=timer.used, wall_s=timer.wall,
              img_per_cpu_s=n_img / timer.used, img_per_wall_s=n_img / timer.wall, last_loss=learn.history[-1]['loss'] if learn.history else None,
              config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()})
    print(f"  {name}: {st['params'] / 1e6:.2f}M params, {timer.steps} steps ({n_img:,} images) in {timer.used:.0f} CPU-s / {timer.wall:.0f} s wall, "
          f"{st['img_per_cpu_s']:.0f} img/CPU-s, last loss {st['last_loss']}", flush=True)
    return ema.ema_model.eval(), st


def clocks():
    return time.process_time(), time.perf_counter()


@torch.no_grad()
def sample_rows(name, net, space, sig_data, ld, rows, a, ie, res, log):
    "FID/KID and speed of each sampler row of model `name` into `res`."
    counted = Counted(Autocast(net, torch.bfloat16))
    for row in rows:
        label, sampler, steps = ROWS[row]
        counted.n = 0
        g = torch.Generator().manual_seed(a.seed + 1000)
        c0, w0 = clocks()
        if space == 'pixel':
            den, sigmas, fn, out = KarrasDenoiser(counted, sig_data), sigmas_karras(steps, 0.002, 80.), get_sampler(sampler), []
            for i in range(0, a.n_samples, a.sample_bs):
                x = torch.randn(min(a.sample_bs, a.n_samples - i), 1, 32, 32, generator=g)
                out.append(fn(den, x * sigmas[0], sigmas).float().clamp(-1, 1))
            samp, dec = torch.cat(out), 0.
        else:
            ld.net = counted
            lat = ld.sample_latents(a.n_samples, steps, sampler, generator=g, bs=a.sample_bs)
            c1 = time.process_time()
            samp = decode_latents(ld.vae, lat, ld.scale, bs=a.sample_bs)
            dec = time.process_time() - c1
        c, w = (t1 - t0 for t1, t0 in zip(clocks(), (c0, w0)))
        r = dict(label=label, steps=steps, nfe=round(counted.n / math.ceil(a.n_samples / a.sample_bs)), n=a.n_samples,
                 fid=ie.fid(samp), kid=ie.kid(samp), samples_per_cpu_s=a.n_samples / c, samples_per_wall_s=a.n_samples / w, decode_cpu_s=dec)
        res[row] = r
        print(f"  {name} {row}: NFE {r['nfe']} FID {r['fid']:.2f} KID {r['kid']:.4f} {r['samples_per_cpu_s']:.1f} samples/CPU-s "
              f"(decode {dec:.1f} CPU-s)", flush=True)
        log()


def table(results):
    m = results.get('_meta', {})
    lines = [f"{m.get('device', '?')}; training budget per model in the table (CPU seconds of its process); FID/KID at {m.get('n_samples', '?')} samples "
             "vs the 10,000 test images", '',
             '| model | params | trained on | training CPU-s (wall s) | training img/CPU-s | images seen | sampler | model evals | FID | KID | samples/CPU-s |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for k in ('_reals', '_recon'):
        if k in results:
            r = results[k]
            lines.append(f"| {r['label']} | – | – | – | – | – | – | – | {r['fid']:.2f} | {r['kid']:.4f} | – |")
    for name, r in results.items():
        if name.startswith('_'): continue
        t = r['train']
        for row, v in r.get('rows', {}).items():
            lines.append(f"| {name} | {t['params'] / 1e6:.2f}M | {r['space']} | {t['cpu_s']:.0f} ({t['wall_s']:.0f}) | {t['img_per_cpu_s']:.0f} | {t['images']:,} | "
                         f"{v['label']} {v['steps']} | {v['nfe']} | {v['fid']:.2f} | {v['kid']:.4f} | {v['samples_per_cpu_s']:.1f} |")
    if '_cache' in results:
        c = results['_cache']
        lines += ['', f"latent cache: {c['n']:,} images encoded in {c['cpu_s']:.0f} CPU-s ({c['wall_s']:.0f} s wall), once; scale {c['scale']:.4f}"]
    return '\n'.join(lines)


def flops_per_sample():
    "Forward FLOPs per image (torch's FlopCounterMode, batch of 8): each model's U-Net evaluation, the autoencoder's decoder, its encoder."
    from torch.utils.flop_counter import FlopCounterMode
    from miniai.vae import AutoencoderKL
    def count(f, x):
        with torch.no_grad(), FlopCounterMode(display=False) as fc: f(x)
        return fc.get_total_flops() / len(x)
    res = {}
    for name, m in MODELS.items():
        ch, hw = (1, 32) if m['space'] == 'pixel' else (4, 8)
        net = LogSigmaCond(EmbUNetModel(ch, ch, **{k: v for k, v in m.items() if k != 'space'})).eval()
        res[name] = count(lambda x: net(x, torch.ones(len(x))), torch.randn(8, ch, hw, hw))
    vae = AutoencoderKL(1, 1, ('DownEncoderBlock2D',) * 3, ('UpDecoderBlock2D',) * 3, (16, 32, 64), 1, latent_channels=4, norm_num_groups=8,
                        sample_size=32).eval()   # the shipped autoencoder's shape
    res['decoder'] = count(vae.decode, torch.randn(8, 4, 8, 8))
    res['encoder'] = count(lambda x: vae.encode(x).mean, torch.randn(8, 1, 32, 32))
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='pixel,latent_s,latent_m')
    p.add_argument('--rows', default=','.join(ROWS))
    p.add_argument('--seconds', type=float, default=900., help='CPU seconds of training per model')
    p.add_argument('--bs', type=int, default=128); p.add_argument('--lr', type=float, default=4e-3)
    p.add_argument('--ema-decay', type=float, default=0.999)
    p.add_argument('--n-samples', type=int, default=2048); p.add_argument('--sample-bs', type=int, default=512)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='bench_out/latent_fmnist')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--table', action='store_true', help='only print the table from --out/results.json (and --merge)')
    p.add_argument('--merge', default='', help='comma-separated other --out folders whose results join the table')
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--flops', action='store_true', help='only print forward FLOPs per sample of each model and of the autoencoder')
    a = p.parse_args()
    if a.flops:
        f = flops_per_sample()
        for k, v in f.items(): print(f'{k}: {v / 1e6:.1f} MFLOPs per image' + (' per model evaluation' if k in MODELS else ' (one pass)'))
        for k in MODELS:
            if MODELS[k]['space'] == 'latent':
                print(f"{k} at 10 evaluations + decode: {(10 * f[k] + f['decoder']) / 1e6:.1f} MFLOPs vs pixel {10 * f['pixel'] / 1e6:.1f}")
        return
    out = Path(a.out)
    if a.smoke: a.seconds, a.n_samples, a.sample_bs, a.bs, out = 5., 64, 64, 32, out.with_name(out.name + '_smoke')
    rf = out / 'results.json'
    results = json.loads(rf.read_text()) if rf.is_file() else {}
    if a.table:
        for d in filter(None, a.merge.split(',')):
            other = json.loads((Path(d) / 'results.json').read_text())
            results.update({k: v for k, v in other.items() if k != '_meta' and (k not in results or not k.startswith('_reals'))})
        return print(table(results))
    torch.set_num_threads(a.threads)
    results['_meta'] = dict(device=f'CPU, {torch.get_num_threads()} thread(s), 2 cores shared with other jobs', torch=torch.__version__,
                            seconds=a.seconds, n_samples=a.n_samples, bs=a.bs, lr=a.lr)
    def log(): atomic_write(rf, json.dumps(results, indent=2))

    xtr, xte = load_fmnist32()
    if a.smoke: xtr, xte = xtr[:2048], xte[:1024]
    ie = ImageEval(fmnist_classifier(head=False), DataLoaders([], TensorLoader(xte, torch.zeros(len(xte)), 1000, tfm=None)))
    names = a.models.split(',')
    for n in names:
        if n not in MODELS: p.error(f'unknown model {n}; choose from {list(MODELS)}')
    g = torch.Generator().manual_seed(a.seed)
    reals = xtr[torch.randperm(len(xtr), generator=g)[:a.n_samples]]
    results['_reals'] = dict(label=f'real training images ({a.n_samples:,}): floor', fid=ie.fid(reals), kid=ie.kid(reals))
    vae, cache, ld = None, None, None
    if any(MODELS[n]['space'] == 'latent' for n in names):
        vae = fmnist_vae()
        c0, w0 = clocks()
        cache = LatentCache.encode(vae, xtr, out / 'cache' if a.smoke else None)
        c, w = (t1 - t0 for t1, t0 in zip(clocks(), (c0, w0)))
        results['_cache'] = dict(n=len(cache), cpu_s=c, wall_s=w, scale=cache.scale, path=str(cache.path))
        recon = decode_latents(vae, cache.latents(torch.randperm(len(xtr), generator=g)[:a.n_samples]), cache.scale)
        results['_recon'] = dict(label=f'autoencoder reconstructions of {a.n_samples:,} training images: floor', fid=ie.fid(recon), kid=ie.kid(recon))
        print(f"{cache}; encoded/read in {c:.0f} CPU-s; reconstruction floor FID {results['_recon']['fid']:.2f}", flush=True)
    print(f"reals floor FID {results['_reals']['fid']:.2f}", flush=True)
    log()
    for name in names:
        space = MODELS[name]['space']
        if space == 'pixel':
            sig_data, ch = data_sigma(xtr), 1
            loader = TensorLoader(xtr, torch.zeros(len(xtr)), a.bs, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(a.seed), tfm=None)
        else:
            sig_data, ch = data_sigma(cache.latents(sample=True, generator=torch.Generator().manual_seed(a.seed))), vae.config['latent_channels']
            loader = cache.loader(a.bs, generator=torch.Generator().manual_seed(a.seed), drop_last=True)
        print(f'{name}: training for {a.seconds:.0f} CPU-s (sig_data {sig_data:.3f})', flush=True)
        net, st = train(name, loader, ch, sig_data, a)
        results[name] = dict(space=space, sig_data=sig_data, train=st, rows={})
        log()
        ld = LatentDiffusion(net, vae, cache.scale, sig_data) if space == 'latent' else None
        sample_rows(name, net, space, sig_data, ld, a.rows.split(','), a, ie, results[name]['rows'], log)
    print('\n' + table(results))


if __name__ == '__main__':
    main()
