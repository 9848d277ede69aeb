"""Train the Fashion-MNIST `AutoencoderKL` that ships with miniai (`miniai/data/fmnist_vae/`), then report its PSNR and FID.

Data: the 60,000 Fashion-MNIST training images padded to 32x32 in [-1, 1] (`miniai.fid.fmnist_32`). Model:
`miniai.vae.AutoencoderKL(1, 1, ...)` with `--chans` per level (latents at 32 / 2**(levels-1)), `--latent` channels.
Loss: MSE of the reconstruction from a posterior sample + `--kl` x the KL term (both means), AdamW, one-cycle over
`--epochs` "epochs" of `--epoch-images` random training images each (short epochs, so the checkpoint after each one
loses little when a run is stopped; rerunning the same command resumes from `--out/ckpt.pt`). bfloat16 autocast.

Then, on the 10,000 test images: PSNR of the reconstructions from the posterior mean (the weights as shipped, so
after any float16 rounding), FID/KID of those reconstructions against the test images (features of the shipped
classifier, `miniai.fid`), and the same for 10,000 real training images (the floor). The latents' standard deviation
over the training set sets `scaling_factor` (1/std) in the shipped `config.json`.

The shipped weights (2-core CPU shared with other jobs, one thread; about 35 minutes):
    .venv/bin/python bench/train_fmnist_vae.py --ship
Smoke test (seconds): .venv/bin/python bench/train_fmnist_vae.py --smoke
"""
import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from miniai.accel import MixedPrecision
from miniai.datasets import DEBIAN_FMNIST, DataLoaders, TensorLoader, dataset_tensors, load_fashion_mnist, read_fmnist_split
from miniai.fid import ImageEval, fmnist_32, fmnist_classifier
from miniai.learner import CheckpointCB, Learner, MetricsCB, ProgressCB, TrainCB
from miniai.sgd import BatchSchedCB
from miniai.utils import atomic_write
from miniai.vae import FMNIST_VAE, AutoencoderKL, AutoencoderKLTrainer, FuncMetric, ae_kl_loss, kld_loss, psnr, recon_mse


class RandomBatches:
    "Each pass: `n_batches` batches `(x, x)` of distinct random rows of `xs`, drawn with `generator` (checkpointed with the learner)."
    def __init__(self, xs, bs, n_batches, generator):
        self.xs, self.bs, self.n, self.generator = xs, bs, n_batches, generator
    def __len__(self): return self.n
    def __iter__(self):
        idx = torch.randperm(len(self.xs), generator=self.generator)[:self.n * self.bs]
        for i in range(self.n):
            xb = self.xs[idx[i * self.bs:(i + 1) * self.bs]]
            yield xb, xb


def load_fmnist32():
    "Training and test images (N, 1, 32, 32) in [-1, 1]."
    if DEBIAN_FMNIST.is_dir():
        (xtr, _), (xte, _) = (read_fmnist_split(DEBIAN_FMNIST, s) for s in ('train', 'test'))
        xtr, xte = torch.from_numpy(xtr.copy()), torch.from_numpy(xte.copy())
    else:
        dd = load_fashion_mnist()
        xtr, xte = dataset_tensors(dd['train'])[0], dataset_tensors(dd['test'])[0]
    return fmnist_32(xtr), fmnist_32(xte)


@torch.no_grad()
def reconstruct(vae, x, bs=500):
    "Reconstructions of x from the posterior means, clamped to [-1, 1], and the means themselves."
    recs, zs = [], []
    for i in range(0, len(x), bs):
        post = vae.encode(x[i:i + bs])
        zs.append(post.mean.float())
        recs.append(vae.decode(post.mean).float().clamp(-1, 1))
    return torch.cat(recs), torch.cat(zs)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--chans', default='16,32,64'); p.add_argument('--lpb', type=int, default=1)
    p.add_argument('--latent', type=int, default=4); p.add_argument('--groups', type=int, default=8)
    p.add_argument('--kl', type=float, default=1e-4)
    p.add_argument('--epochs', type=int, default=24); p.add_argument('--epoch-images', type=int, default=10240)
    p.add_argument('--schedule-epochs', type=int, default=None,
                   help='length of the one-cycle schedule in epochs (default --epochs); fewer --epochs stops a run early on that schedule')
    p.add_argument('--bs', type=int, default=64); p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--wd', type=float, default=1e-4)
    p.add_argument('--amp', default='bf16', choices=['bf16', 'no'])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='bench_out/fmnist_vae')
    p.add_argument('--ship', action='store_true', help=f'also write the weights to {FMNIST_VAE}')
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16'], help='dtype of the saved weights')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--smoke', action='store_true')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.smoke: a.chans, a.epochs, a.epoch_images, a.bs, a.out = '8,16,16', 2, 256, 32, a.out + '_smoke'
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    xtr, xte = load_fmnist32()
    if a.smoke: xtr, xte = xtr[:2048], xte[:1024]
    chans = tuple(int(c) for c in a.chans.split(','))
    torch.manual_seed(a.seed)
    vae = AutoencoderKL(1, 1, ('DownEncoderBlock2D',) * len(chans), ('UpDecoderBlock2D',) * len(chans), chans, a.lpb,
                        latent_channels=a.latent, norm_num_groups=a.groups, sample_size=32, scaling_factor=1.)
    n_params = sum(p.numel() for p in vae.parameters())
    print(f'AutoencoderKL {chans}, {a.lpb} layer(s) per block, {a.latent}x{32 // vae.downsample_factor}x{32 // vae.downsample_factor} '
          f'latents, {n_params / 1e6:.2f}M parameters; {torch.get_num_threads()} thread(s)', flush=True)
    n_batches = a.epoch_images // a.bs
    dls = DataLoaders(RandomBatches(xtr, a.bs, n_batches, torch.Generator().manual_seed(a.seed)),
                      TensorLoader(xte[:1024], xte[:1024], 512, tfm=None))
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=a.lr, total_steps=(a.schedule_epochs or a.epochs) * n_batches, pct_start=0.1)
    opt = partial(torch.optim.AdamW, eps=1e-5, weight_decay=a.wd)
    ckpt = out / 'ckpt.pt'
    cbs = [MixedPrecision(a.amp) if a.amp != 'no' else TrainCB(), BatchSchedCB(sched), CheckpointCB(ckpt), ProgressCB(notebook=False),
           MetricsCB(mse=FuncMetric(recon_mse), kld=FuncMetric(kld_loss))]
    learn = Learner(AutoencoderKLTrainer(vae, torch.Generator().manual_seed(a.seed + 1)), dls, partial(ae_kl_loss, kl_weight=a.kl),
                    lr=a.lr, opt_func=opt, cbs=cbs)
    t = time.perf_counter()
    learn.fit(a.epochs, resume_from=ckpt if ckpt.is_file() else None)
    train_s = time.perf_counter() - t
    print(f'training: {train_s:.0f}s this run', flush=True)

    vae.eval()
    _, ztr = reconstruct(vae, xtr[:10000])
    std, mean = float(ztr.double().std()), ztr.double().mean((0, 2, 3)).tolist()
    vae.config['scaling_factor'] = round(1 / std, 5)
    dtype = getattr(torch, a.dtype)
    vae.save_pretrained(out / 'vae', dtype=dtype)
    shipped = AutoencoderKL.from_pretrained(out / 'vae')   # evaluate the weights as written
    rec, _ = reconstruct(shipped, xte)
    psnr_f32 = psnr(reconstruct(vae, xte)[0], xte) if dtype != torch.float32 else None   # what the rounding of the weights costs
    ie = ImageEval(fmnist_classifier(head=False), DataLoaders([], TensorLoader(xte, torch.zeros(len(xte)), 1000, tfm=None)))
    res = dict(params=n_params, chans=list(chans), layers_per_block=a.lpb, latent=[a.latent, 32 // vae.downsample_factor, 32 // vae.downsample_factor],
               kl_weight=a.kl, epochs=a.epochs, schedule_epochs=a.schedule_epochs or a.epochs, epoch_images=a.epoch_images, bs=a.bs, lr=a.lr, train_seconds_last_run=train_s,
               latent_std=std, latent_channel_means=mean, scaling_factor=vae.config['scaling_factor'], weights_dtype=a.dtype,
               psnr_test=psnr(rec, xte), psnr_test_float32_weights=psnr_f32, mse_test=float((rec - xte).pow(2).mean()),
               fid_recon_test=ie.fid(rec), kid_recon_test=ie.kid(rec), fid_reals_train=ie.fid(xtr[:10000]), kid_reals_train=ie.kid(xtr[:10000]),
               history=learn.history[-2:], threads=torch.get_num_threads(), total_seconds=time.perf_counter() - t_start)
    atomic_write(out / 'results.json', json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != 'history'}, indent=1))
    print(f"| autoencoder | params | latent | PSNR (test) | rFID (10k test) | rKID | reals FID (10k train) |\n|---|---|---|---|---|---|---|\n"
          f"| {a.chans} x{a.lpb} | {n_params / 1e6:.2f}M | {a.latent}x{32 // vae.downsample_factor}x{32 // vae.downsample_factor} | "
          f"{res['psnr_test']:.2f} dB | {res['fid_recon_test']:.2f} | {res['kid_recon_test']:.4f} | {res['fid_reals_train']:.2f} |")
    if a.ship:
        conf = json.loads((out / 'vae' / 'config.json').read_text())
        conf['_miniai'] = {k: res[k] for k in ('psnr_test', 'psnr_test_float32_weights', 'fid_recon_test', 'kid_recon_test', 'fid_reals_train', 'params',
                                                   'kl_weight', 'epochs', 'schedule_epochs', 'epoch_images', 'latent_std', 'weights_dtype')}
        conf['_miniai']['data'] = 'Fashion-MNIST train, padded to 32x32, in [-1, 1] (miniai.fid.fmnist_32)'
        conf['_miniai']['command'] = 'python bench/train_fmnist_vae.py --ship' + (f' --epochs {a.epochs} --schedule-epochs {a.schedule_epochs}' if a.schedule_epochs else '') + (f' --dtype {a.dtype}' if a.dtype != 'float32' else '')
        shipped.save_pretrained(FMNIST_VAE, dtype=dtype)
        atomic_write(FMNIST_VAE / 'config.json', json.dumps(conf, indent=2) + '\n')
        print(f'shipped to {FMNIST_VAE}')


if __name__ == '__main__':
    main()
