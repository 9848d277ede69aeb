"""Super-resolution (2x) on Fashion-MNIST and MNIST: the course's progression as a table, plus a colour demo on photographs.

Data: 32x32 images in [-1, 1] (`miniai.fid.fmnist_32`: 28x28 zero-padded); the input is the image area-downscaled to
16x16 and bicubic-upscaled back (`miniai.superres.sr_input`). Every model has the encoder layout and widths of the
shipped Fashion-MNIST classifier (`nfs` 8,16,32,64,128), is trained for `--epochs` on all 60,000 training images with
AdamW and a one-cycle schedule (bs `--bs`, bf16 autocast where fast; `--n-train N`: the first N images only), and is
measured on the 10,000 test images
(outputs clamped to [-1, 1]): MSE, PSNR (dB, range 2), SSIM (Gaussian 11x11, sigma 1.5).

Rows (each changes one thing; "feature loss" = pixel MSE + 0.05 x MSE of the classifier's block 1-3 activations):
  bicubic                        the input itself
  autoencoder, MSE               `sr_autoencoder`: no skips, no input residual
  U-Net, MSE                     `SRUNet`: additive skips, output = input + zero-initialised correction
  U-Net, feature loss            + `FeatureLoss(fmnist_classifier(), [1, 2, 3], [0.05] * 3)`
  + pretrained encoder           encoder from the classifier (`load_encoder`), frozen for the first epoch
  + cross convs                  a `ResBlock` on each skip path
The classifier was trained on Fashion-MNIST; for MNIST it is a foreign but still useful feature extractor.

`--photos`: a colour `SRUNet(nfs=(32, 64, 128), n_in=3, n_out=3)` trained for `--photo-steps` steps on random 32x32
patches of scikit-image's astronaut, chelsea, rocket, immunohistochemistry and hubble_deep_field photographs, then
upscaling the held-out coffee photograph (400x600) 2x; PSNR/SSIM against bicubic, and a crop saved as a PNG.

Run (2-core CPU, one thread):  .venv/bin/python bench/superres.py --epochs 3 --photos
With a GPU:                    .venv/bin/python bench/superres.py --epochs 3 --photos --device cuda --threads 0
Results so far: bench/results_later.md
Smoke test (seconds): --smoke
"""
import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from miniai.accel import MixedPrecision, fast_bf16
from miniai.datasets import DataLoaders, TensorLoader, dataset_tensors, load_fashion_mnist
from miniai.fid import fmnist_32, fmnist_classifier
from miniai.learner import Callback, DeviceCB, Learner, MetricsCB, TrainCB
from miniai.mnist import load_mnist
from miniai.sgd import BatchSchedCB
from miniai.superres import (sr_input, SuperResCB, image_psnr, ssim, SRUNet, sr_autoencoder, load_encoder, freeze_encoder, FeatureLoss,
                             random_patches, skimage_photos)
from miniai.utils import atomic_write

NFS = (8, 16, 32, 64, 128)
ROWS = ['bicubic', 'autoencoder, MSE', 'U-Net, MSE', 'U-Net, feature loss', '+ pretrained encoder', '+ cross convs']


class FreezeEncoderCB(Callback):
    "Keep the model's encoder frozen for the first `epochs` epochs of the fit (the course's fine-tuning recipe)."
    def __init__(self, epochs=1): self.epochs = epochs
    def before_fit(self, learn): freeze_encoder(learn.model, True)
    def after_full_epoch(self, learn):
        if learn.epoch + 1 >= self.epochs: freeze_encoder(learn.model, False)
    def cleanup_fit(self, learn): freeze_encoder(learn.model, False)


@torch.no_grad()
def measure(model, x, device='cpu', bs=500):
    "MSE, PSNR and SSIM of `model` (None: bicubic) on images x, outputs clamped to [-1, 1]."
    mse, ps, ss = [], [], []
    for i in range(0, len(x), bs):
        t = x[i:i + bs].to(device)
        inp = sr_input(t)
        out = inp if model is None else model.eval()(inp)
        out = out.float().clamp(-1, 1)
        mse.append((out - t).pow(2).flatten(1).mean(1).cpu()); ps.append(image_psnr(out, t).cpu()); ss.append(ssim(out, t).cpu())
    return dict(mse=float(torch.cat(mse).mean()), psnr=float(torch.cat(ps).mean()), ssim=float(torch.cat(ss).mean()))


def make(row):
    if row == 'autoencoder, MSE': return sr_autoencoder(NFS)
    return SRUNet(NFS, cross_convs=row == '+ cross convs')


def train_row(row, a, xtr, bf16, clf):
    torch.manual_seed(a.seed)
    model = make(row)
    cbs = [DeviceCB(a.device), SuperResCB(), MixedPrecision('bf16') if bf16 else TrainCB()]
    loss = F.mse_loss
    if row not in ('autoencoder, MSE', 'U-Net, MSE'): loss = FeatureLoss(clf, [1, 2, 3], [0.05] * 3)
    if row in ('+ pretrained encoder', '+ cross convs'):
        load_encoder(model, clf)
        cbs.append(FreezeEncoderCB(1))
    dls = DataLoaders(TensorLoader(xtr, torch.zeros(len(xtr)), a.bs, shuffle=True, drop_last=True,
                                   generator=torch.Generator().manual_seed(a.seed), tfm=None), [])
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=a.lr, total_steps=a.epochs * len(dls.train))
    learn = Learner(model, dls, loss, lr=a.lr, opt_func=torch.optim.AdamW, cbs=cbs + [BatchSchedCB(sched), MetricsCB()])
    t = time.perf_counter()
    learn.fit(a.epochs, valid=False)
    return model, time.perf_counter() - t, [r['loss'] for r in learn.history]


def photos(a, bf16, out, res):
    ph = skimage_photos()
    test = ph.pop('coffee')
    train = list(ph.values())
    g = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    model = SRUNet(nfs=(32, 64, 128), n_in=3, n_out=3).to(a.device)
    dt = torch.device(a.device).type
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.photo_steps)
    t = time.perf_counter()
    for step in range(a.photo_steps):
        x = random_patches(train, 32, a.bs, generator=g).to(a.device)
        with torch.autocast(dt, dtype=torch.bfloat16, enabled=bf16): loss = F.mse_loss(model(sr_input(x)).float(), x)
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()
        if step % 200 == 0: print(f'  photos step {step}: loss {loss.item():.5f}', flush=True)
    secs = time.perf_counter() - t
    x = test[None].to(a.device)                      # (1, 3, 400, 600)
    inp = sr_input(x)
    with torch.no_grad(), torch.autocast(dt, dtype=torch.bfloat16, enabled=bf16): y = model.eval()(inp).float().clamp(-1, 1)
    r = dict(train_s=secs, steps=a.photo_steps, bicubic=dict(psnr=float(image_psnr(inp.clamp(-1, 1), x)), ssim=float(ssim(inp.clamp(-1, 1), x))),
             unet=dict(psnr=float(image_psnr(y, x)), ssim=float(ssim(y, x))))
    res['photos'] = r
    print(f"photos (coffee, 400x600, 2x): bicubic PSNR {r['bicubic']['psnr']:.2f} SSIM {r['bicubic']['ssim']:.4f}; "
          f"U-Net PSNR {r['unet']['psnr']:.2f} SSIM {r['unet']['ssim']:.4f} ({secs / 60:.1f} min training)", flush=True)
    from miniai.datasets import show_images
    import matplotlib.pyplot as plt
    crop = lambda im: im[0, :, 100:228, 250:378].float().cpu().add(1).div(2).clamp(0, 1)
    show_images([crop(F.avg_pool2d(x, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)), crop(inp), crop(y), crop(x)],
                titles=['low-res', 'bicubic', 'U-Net', 'original'], ncols=4, imsize=3)
    plt.savefig(out / 'photo_coffee.png', bbox_inches='tight'); plt.close('all')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=3); p.add_argument('--bs', type=int, default=64); p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--datasets', default='fmnist,mnist'); p.add_argument('--rows', default='all', help='all, or indices into ROWS: 0,2,3')
    p.add_argument('--n-train', type=int, default=0, help='first N training images only (0: all 60,000)')
    p.add_argument('--photos', action='store_true'); p.add_argument('--photo-steps', type=int, default=1500)
    p.add_argument('--device', default='cpu', help='cpu or cuda (with a GPU: --device cuda --threads 0)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='bench_out/superres'); p.add_argument('--seed', type=int, default=42)
    p.add_argument('--smoke', action='store_true')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    rows = ROWS if a.rows == 'all' else [ROWS[int(i)] for i in a.rows.split(',')]
    if a.smoke: a.epochs, a.photo_steps = 1, 5
    out = Path(a.out + ('_smoke' if a.smoke else '')); out.mkdir(parents=True, exist_ok=True)
    bf16 = fast_bf16(a.device)
    clf = fmnist_classifier(device=a.device)
    res = dict(args=vars(a), torch=torch.__version__, tables={})
    def log(): atomic_write(out / 'results.json', json.dumps(res, indent=2))
    for ds in a.datasets.split(','):
        if ds == 'fmnist':
            dd = load_fashion_mnist()
            xtr, xte = (fmnist_32(dataset_tensors(dd[s])[0]) for s in ('train', 'test'))
        elif ds == 'mnist':
            mn = load_mnist()
            xtr, xte = fmnist_32(mn['train'][0]), fmnist_32(mn['test'][0])
        else: p.error(f'unknown dataset {ds}')
        if a.n_train: xtr = xtr[:a.n_train]
        if a.smoke: xtr, xte = xtr[:256], xte[:256]
        tab = res['tables'][ds] = {}
        for row in rows:
            if row == 'bicubic': model, secs, losses = None, 0., []
            else: model, secs, losses = train_row(row, a, xtr, bf16, clf)
            with torch.autocast(torch.device(a.device).type, dtype=torch.bfloat16, enabled=bf16 and model is not None): m = measure(model, xte, a.device)
            tab[row] = dict(**m, train_s=secs, losses=losses)
            print(f"{ds} | {row} | MSE {m['mse']:.5f} | PSNR {m['psnr']:.2f} | SSIM {m['ssim']:.4f} | {secs / 60:.1f} min", flush=True)
            log()
    if a.photos: photos(a, bf16, out, res); log()
    for ds, tab in res['tables'].items():
        print(f'\n{ds}, 2x (16x16 -> 32x32), {len(xte) if a.smoke else "10,000"} test images, {a.epochs} epochs of {len(xtr):,} images each\n')
        print('| model | MSE | PSNR (dB) | SSIM | training |\n|---|---|---|---|---|')
        for row, m in tab.items(): print(f"| {row} | {m['mse']:.5f} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['train_s'] / 60:.1f} min |")


if __name__ == '__main__':
    main()
