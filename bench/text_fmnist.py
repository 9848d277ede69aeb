"""The miniature text-to-image model of notebook 31 on Fashion-MNIST: train it from scratch, then FID, KID and prompt
adherence against guidance scale, next to a class-conditional pixel-space model trained for the same CPU budget.

  t2i         `miniai.text`: a word-level tokenizer, a 2-layer transformer text encoder (dim 64) and a `TextUNetModel`
              (nfs 32,64,128, cross-attention at 4x4 and 2x2... of the 8x8 latents) trained together from scratch on the
              scaled latents of the shipped autoencoder (`LatentCache`), captions from `fmnist_captions`, 10% empty
  pixel_cond  `CondUNetModel` on pixels (nfs 16,32,64,128, attention at 4x4: the README's CPU model plus a label embedding),
              labels dropped to the null class 10% of the time
Both: EDM training + EMA (as bench/diffusion_ablation.py found best), bf16 autocast, AdamW, one-cycle over `--seconds` of
this process's CPU time (see bench/latent_fmnist.py for why CPU time), sampled with DPM++ 2M (`--steps`) on Karras sigmas
in [0.002, 80] with classifier-free guidance at each `--scales` value.

Per guidance scale: `--n-samples` samples, prompts spread evenly over the ten classes (a random template and name for the
text model, the label for the pixel model), FID/KID against the 10,000 test images, and prompt adherence: the share of
samples the shipped Fashion-MNIST classifier (`miniai.fid.fmnist_classifier`, 93-94% accurate on real test images, whose
own score is printed as the reference) assigns to the prompt's class.

`--ship` writes the text model (float16 safetensors, its tokenizer and config) to miniai/data/fmnist_t2i/, which
`miniai.text.fmnist_text_to_image()` and `generate()` load. Results are merged into `--out/results.json` after every row.

The tables in bench/results_latent_fmnist.md (2-core CPU shared with other agents; 600 or 1,200 CPU-seconds per model; separate
folders, so the runs can go at the same time):
    .venv/bin/python bench/text_fmnist.py --models t2i --seconds 1200 --scales 1,2,3,5 --ship --out bench_out/text_fmnist_t2i
    .venv/bin/python bench/text_fmnist.py --models pixel_cond --seconds 600 --pixel-scales 1,2 --out bench_out/text_fmnist_pixel
    .venv/bin/python bench/text_fmnist.py --table --out bench_out/text_fmnist_t2i --merge bench_out/text_fmnist_pixel
The shipped model only, e.g. with guidance limited to the middle noise levels (no training):
    .venv/bin/python bench/text_fmnist.py --shipped --models t2i --scales 2,2.5,3 --guidance-interval 0.1,10 --out bench_out/text_fmnist_shipped
Smoke test: .venv/bin/python bench/text_fmnist.py --smoke
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from diffusion_ablation import Autocast, TimedOneCycle       # noqa: E402
from latent_fmnist import clocks                             # noqa: E402

from miniai.accel import MixedPrecision
from miniai.datasets import DEBIAN_FMNIST, DataLoaders, TensorLoader, dataset_tensors, load_fashion_mnist, read_fmnist_split
from miniai.diffusion import CondUNetModel, KarrasDenoiser, cfg_denoiser, drop_labels, noisify_karras, sample_dpmpp_2m, sigmas_karras
from miniai.diffusion.edm import LogSigmaCond, data_sigma
from miniai.ema import EMA
from miniai.fid import ImageEval, fmnist_32, fmnist_classifier
from miniai.latent import LatentCache, decode_latents
from miniai.learner import Callback, DeviceCB, Learner, MetricsCB
from miniai.text import (CAPTION_TEMPLATES, FMNIST_NAMES, FMNIST_T2I, Captioner, CaptionEDMCB, TextEncoder, TextToImage, TextToImageNet,
                         TextUNetModel, WordTokenizer, fmnist_captions, fmnist_text_to_image)
from miniai.utils import atomic_write
from miniai.vae import fmnist_vae

T2I = dict(text_encoder=dict(dim=64, n_layers=2, heads=4), unet=dict(nfs=(32, 64, 128), num_layers=1, attn_levels=(1, 2), dim_head=32))
PIXEL = dict(nfs=(16, 32, 64, 128), num_layers=1, attn_chans=8, attn_start=3)


class LabelEDMCB(Callback):
    "Batches (x0, labels) -> ((c_in x, sigma, labels with p dropped to the null class), target) for a `CondUNetModel`."
    order = DeviceCB.order + 1
    def __init__(self, null, sig_data, p=0.1, generator=None): self.null, self.sig_data, self.p, self.generator = null, sig_data, p, generator
    def before_batch(self, learn):
        x0, y = learn.batch[:2]
        c = drop_labels(y, self.null, self.p, self.generator)
        (x, sig), target = noisify_karras(x0, self.sig_data, self.generator)
        learn.batch = ((x, sig, c), target)


def load_data():
    "Training and test images (N, 1, 32, 32) in [-1, 1] and their labels."
    if DEBIAN_FMNIST.is_dir():
        (xtr, ytr), (xte, yte) = (read_fmnist_split(DEBIAN_FMNIST, s) for s in ('train', 'test'))
        xtr, xte = torch.from_numpy(xtr.copy()), torch.from_numpy(xte.copy())
        ytr, yte = torch.from_numpy(ytr.astype('int64')), torch.from_numpy(yte.astype('int64'))
    else:
        dd = load_fashion_mnist()
        (xtr, ytr), (xte, yte) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    return fmnist_32(xtr), ytr, fmnist_32(xte), yte


def fit(net, loader, cb, a):
    "Train `net` with the batch callback `cb`, EMA and the CPU budget; returns the EMA copy and the training stats."
    ema, timer = EMA(a.ema_decay), TimedOneCycle(a.seconds, a.lr, clock=time.process_time)
    opt = lambda ps, lr: torch.optim.AdamW(ps, lr=lr, eps=1e-5, weight_decay=0.)
    learn = Learner(net, DataLoaders(loader, []), F.mse_loss, lr=a.lr, opt_func=opt, cbs=[cb, ema, timer, MetricsCB(), MixedPrecision('bf16')])
    learn.fit(10**6, valid=False)
    n_img = timer.steps * a.bs
    st = dict(params=sum(p.numel() for p in net.parameters()), steps=timer.steps, images=n_img, cpu_s=timer.used, wall_s=timer.wall,
              img_per_cpu_s=n_img / timer.used, img_per_wall_s=n_img / timer.wall)
    print(f"  {st['params'] / 1e6:.2f}M params, {timer.steps} steps ({n_img:,} images) in {timer.used:.0f} CPU-s / {timer.wall:.0f} s wall", flush=True)
    return ema.ema_model.eval(), st


def prompts_for(labels, generator):
    "A random caption (template and name) for each label."
    res = []
    for k in labels.tolist():
        names = FMNIST_NAMES[k]
        n = names[int(torch.randint(len(names), (1,), generator=generator))]
        t = CAPTION_TEMPLATES[int(torch.randint(len(CAPTION_TEMPLATES), (1,), generator=generator))]
        res.append(t.format(n))
    return res


@torch.no_grad()
def evaluate(name, sample_fn, scales, a, ie, clf, res, log, interval=None):
    "FID, KID and adherence per guidance scale (guided only for sigma in `interval`, if given); `sample_fn(labels, scale, generator)` returns images in [-1, 1]."
    labels = torch.arange(a.n_samples) % 10
    for s in scales:
        g = torch.Generator().manual_seed(a.seed + 7)
        c0, w0 = clocks()
        samp = sample_fn(labels, s, g)
        c, w = (t1 - t0 for t1, t0 in zip(clocks(), (c0, w0)))
        pred = torch.cat([clf(samp[i:i + 512]).argmax(1) for i in range(0, len(samp), 512)])
        r = dict(scale=s, interval=interval, n=a.n_samples, fid=ie.fid(samp), kid=ie.kid(samp), adherence=float((pred == labels).float().mean()),
                 samples_per_cpu_s=a.n_samples / c, samples_per_wall_s=a.n_samples / w)
        res[guidance_label(s, interval)] = r
        print(f"  {name} guidance {guidance_label(s, interval)}: FID {r['fid']:.2f} KID {r['kid']:.4f} adherence {r['adherence']:.1%} {r['samples_per_cpu_s']:.1f} samples/CPU-s", flush=True)
        log()


def guidance_label(scale, interval=None):
    "The guidance column: the scale, and the noise levels it applies to when limited."
    return f'{scale}' if interval is None else f'{scale}, σ in ({interval[0]:g}, {interval[1]:g}]'


def table(results):
    m = results.get('_meta', {})
    lines = [f"{m.get('device', '?')}; training budget {m.get('seconds', '?')} CPU-s per model; DPM++ 2M {m.get('steps', '?')} steps; "
             f"{m.get('n_samples', '?')} samples per row, prompts spread evenly over the classes", '']
    if '_reals' in results:
        r = results['_reals']
        lines.append(f"reals: FID {r['fid']:.2f}, KID {r['kid']:.4f} ({r['n']:,} training images); the classifier's accuracy on the test set "
                     f"(the adherence of real images) {r['classifier_acc']:.1%}")
    lines += ['', '| model | params | training img/CPU-s | images seen | guidance | FID | KID | adherence | samples/CPU-s |',
              '|---|---|---|---|---|---|---|---|---|']
    for name, r in results.items():
        if name.startswith('_'): continue
        t = r['train']
        for v in r.get('rows', {}).values():
            lines.append(f"| {name} | {t['params'] / 1e6:.2f}M | {t['img_per_cpu_s']:.0f} | {t['images']:,} | {guidance_label(v['scale'], v.get('interval'))} | {v['fid']:.2f} | "
                         f"{v['kid']:.4f} | {v['adherence']:.1%} | {v['samples_per_cpu_s']:.1f} |")
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', default='t2i,pixel_cond')
    p.add_argument('--seconds', type=float, default=1200.)
    p.add_argument('--scales', default='1,1.5,2,3,4,6'); p.add_argument('--pixel-scales', default='1,2,3')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--guidance-interval', default='', help='LO,HI: guide the text model only for sigma in (LO, HI] (Kynkäänniemi et al. 2024)')
    p.add_argument('--shipped', action='store_true', help='evaluate the shipped text model (miniai/data/fmnist_t2i) instead of training one')
    p.add_argument('--bs', type=int, default=128); p.add_argument('--lr', type=float, default=4e-3)
    p.add_argument('--ema-decay', type=float, default=0.999)
    p.add_argument('--n-samples', type=int, default=2048); p.add_argument('--sample-bs', type=int, default=512)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='bench_out/text_fmnist')
    p.add_argument('--ship', action='store_true', help=f'write the text model to {FMNIST_T2I}')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--table', action='store_true', help='only print the table from --out/results.json (and --merge)')
    p.add_argument('--merge', default='', help='comma-separated other --out folders whose results join the table')
    p.add_argument('--smoke', action='store_true')
    a = p.parse_args()
    out = Path(a.out)
    if a.smoke: a.seconds, a.n_samples, a.sample_bs, a.bs, a.scales, a.pixel_scales, out = 5., 40, 40, 32, '1,3', '2', out.with_name(out.name + '_smoke')
    rf = out / 'results.json'
    results = json.loads(rf.read_text()) if rf.is_file() else {}
    if a.table:
        for d in filter(None, a.merge.split(',')):
            other = json.loads((Path(d) / 'results.json').read_text())
            results.update({k: v for k, v in other.items() if not k.startswith('_') or k not in results})
        return print(table(results))
    interval = tuple(float(v) for v in a.guidance_interval.split(',')) if a.guidance_interval else None
    if interval is not None and len(interval) != 2: p.error('--guidance-interval takes LO,HI')
    if a.shipped and (a.models != 't2i' or a.ship): p.error('--shipped evaluates the shipped text model: use it with --models t2i and without --ship')
    torch.set_num_threads(a.threads)
    results['_meta'] = dict(device=f'CPU, {torch.get_num_threads()} thread(s), 2 cores shared with other jobs', torch=torch.__version__,
                            seconds=a.seconds, steps=a.steps, n_samples=a.n_samples, bs=a.bs, lr=a.lr)
    def log(): atomic_write(rf, json.dumps(results, indent=2))

    xtr, ytr, xte, yte = load_data()
    if a.smoke: xtr, ytr, xte, yte = xtr[:2048], ytr[:2048], xte[:1024], yte[:1024]
    ie = ImageEval(fmnist_classifier(head=False), DataLoaders([], TensorLoader(xte, yte, 1000, tfm=None)))
    clf = fmnist_classifier()
    with torch.no_grad(): acc = float(torch.cat([clf(xte[i:i + 1000]).argmax(1) for i in range(0, len(xte), 1000)]).eq(yte).float().mean())
    reals = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(a.seed))[:a.n_samples]]
    results['_reals'] = dict(fid=ie.fid(reals), kid=ie.kid(reals), n=a.n_samples, classifier_acc=acc)
    log()
    for name in a.models.split(','):
        torch.manual_seed(a.seed)
        if name == 't2i' and a.shipped:
            pipe = fmnist_text_to_image()
            vae, sig_data, info = pipe.vae, pipe.sig_data, pipe.info
            n_img, cpu_s = info['images_seen'], info['trained_cpu_seconds']
            st = dict(params=sum(q.numel() for m in (pipe.text_encoder, pipe.unet) for q in m.parameters()), images=n_img, cpu_s=cpu_s, img_per_cpu_s=n_img / cpu_s)
            print(f"t2i: the shipped model ({cpu_s:.0f} CPU-s of training, {n_img:,} images; {info['command']})", flush=True)
        elif name == 't2i':
            vae = fmnist_vae()
            cache = LatentCache.encode(vae, xtr, out / 'cache' if a.smoke else None)
            caps = fmnist_captions()
            tok = WordTokenizer.from_texts([c for c, _ in caps])
            te = TextEncoder(len(tok), tok.max_len, **T2I['text_encoder'])
            un = TextUNetModel(vae.config['latent_channels'], vae.config['latent_channels'], context_dim=te.dim, **T2I['unet'])
            sig_data = data_sigma(cache.latents(sample=True, generator=torch.Generator().manual_seed(a.seed)))
            loader = cache.loader(a.bs, labels=ytr, generator=torch.Generator().manual_seed(a.seed), drop_last=True)
            print(f't2i: {len(tok)} tokens, sig_data {sig_data:.3f}, training for {a.seconds:.0f} CPU-s', flush=True)
            cb = CaptionEDMCB(Captioner(tok, caps, p_uncond=0.1), sig_data, torch.Generator().manual_seed(a.seed + 1))
            ema_net, st = fit(LogSigmaCond(TextToImageNet(te, un)), loader, cb, a)
            tn = ema_net.model
            pipe = TextToImage(tok, tn.text_encoder, tn.unet, vae, cache.scale, sig_data).eval()
        if name == 't2i':
            def sample_fn(labels, s, g):
                prompts = prompts_for(labels, torch.Generator().manual_seed(a.seed + 3))
                with torch.autocast('cpu', dtype=torch.bfloat16):   # the U-Net in bfloat16, the decoder in float32
                    z = pipe.generate(prompts, steps=a.steps, guidance_scale=s, generator=g, progress=False, bs=a.sample_bs, latents=True,
                                      guidance_interval=interval)
                return decode_latents(vae, z, pipe.scale, a.sample_bs)
            scales = [float(s) for s in a.scales.split(',')]
        elif name == 'pixel_cond':
            sig_data = data_sigma(xtr)
            loader = TensorLoader(xtr, ytr, a.bs, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(a.seed), tfm=None)
            print(f'pixel_cond: sig_data {sig_data:.3f}, training for {a.seconds:.0f} CPU-s', flush=True)
            ema_net, st = fit(LogSigmaCond(CondUNetModel(10, 1, 1, **PIXEL)), loader, LabelEDMCB(10, sig_data, 0.1, torch.Generator().manual_seed(a.seed + 1)), a)
            def sample_fn(labels, s, g):
                out = []
                sigmas = sigmas_karras(a.steps, 0.002, 80.)
                for i in range(0, len(labels), a.sample_bs):
                    lb = labels[i:i + a.sample_bs]
                    net = Autocast(ema_net, torch.bfloat16)
                    den = KarrasDenoiser(cfg_denoiser(net, lb, 10, s) if s != 1 else (lambda x, t: net(x, t, lb)), sig_data)
                    x = torch.randn(len(lb), 1, 32, 32, generator=g)
                    out.append(sample_dpmpp_2m(den, x * sigmas[0], sigmas).float().clamp(-1, 1))
                return torch.cat(out)
            scales = [float(s) for s in a.pixel_scales.split(',')]
        else: p.error(f'unknown model {name}')
        key = 't2i_shipped' if name == 't2i' and a.shipped else name
        results[key] = dict(sig_data=sig_data, train=st, rows=results.get(key, {}).get('rows', {}) if a.shipped else {})
        log()
        if name == 't2i' and (a.ship or a.smoke):
            dest = FMNIST_T2I if a.ship else out / 't2i'
            pipe.info = dict(trained_cpu_seconds=st['cpu_s'], images_seen=st['images'], command=f'python bench/text_fmnist.py --models t2i --seconds {a.seconds:g} --scales {a.scales} --ship',
                             data='Fashion-MNIST train (60k), latents of miniai.vae.fmnist_vae(), captions from miniai.text.fmnist_captions')
            pipe.save(dest, dtype=torch.float16)
            print(f'  saved to {dest}', flush=True)
        evaluate(key, sample_fn, scales, a, ie, clf, results[key]['rows'], log, interval if name == 't2i' else None)
        if name == 't2i' and a.ship:
            pipe.info['results'] = {k: {m: v[m] for m in ('fid', 'kid', 'adherence')} for k, v in results[name]['rows'].items()}
            pipe.save(FMNIST_T2I, dtype=torch.float16)
    print('\n' + table(results))


if __name__ == '__main__':
    main()
