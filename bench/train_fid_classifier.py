"""Train the Fashion-MNIST classifier whose features miniai.fid uses for FID/KID, and write its weights.

The course's "Augment 2" recipe, scaled down for a CPU: the ResNet of `miniai.fid.fmnist_classifier_model`
on Fashion-MNIST zero-padded to 32x32 in [-1, 1] (`miniai.fid.fmnist_32`), random crop (padding 1) and
horizontal flip, one-cycle Adam (max lr 1e-2, wd 1e-5), batch size 256, trained with miniai's Learner.
Prints the test accuracy each epoch and writes {'nfs', 'model', 'test_acc', 'epochs'} atomically.

The shipped miniai/data/fmnist_classifier.pt was made with the defaults (5 epochs, nfs 8,16,32,64,128,128,
603k parameters, 2.4 MB): 92.8% accuracy on the 10,000 test images (93.5% on the packaged sample's test
split), 22 minutes on a shared 2-core CPU with `--threads 1`.

Run:  .venv/bin/python bench/train_fid_classifier.py [--epochs 5] [--nfs 8,16,32,64,128,128]
          [--out miniai/data/fmnist_classifier.pt] [--device cpu] [--threads 1] [--n-train N]
"""
import argparse
import os
import time
from functools import partial

import torch
import torch.nn.functional as F

from miniai.activations import set_seed
from miniai.augment import rand_crop_flip
from miniai.conv import def_device
from miniai.datasets import TensorLoader, DataLoaders, dataset_tensors, load_fashion_mnist
from miniai.utils import atomic_write
from miniai.fid import FMNIST_CLASSIFIER, fmnist_32, fmnist_classifier_model
from miniai.init import BatchTransformCB, init_weights
from miniai.learner import Accuracy, DeviceCB, MetricsCB, ProgressCB, TrainLearner
from miniai.sgd import Adam, BatchSchedCB


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--nfs', default='8,16,32,64,128,128', help='channels of the ResBlocks (see fmnist_classifier_model)')
    p.add_argument('--bs', type=int, default=256)
    p.add_argument('--lr', type=float, default=1e-2)
    p.add_argument('--n-train', type=int, default=0, help='first N training images only (0: all 60,000)')
    p.add_argument('--device', default=def_device)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave the default)')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--out', default=str(FMNIST_CLASSIFIER))
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    set_seed(a.seed)
    dd = load_fashion_mnist()
    (xtr, ytr), (xte, yte) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    if a.n_train: xtr, ytr = xtr[:a.n_train], ytr[:a.n_train]
    xtr, xte = fmnist_32(xtr), fmnist_32(xte)
    g = torch.Generator().manual_seed(a.seed)
    dls = DataLoaders(TensorLoader(xtr, ytr, a.bs, shuffle=True, generator=g, tfm=None),
                      TensorLoader(xte, yte, 1024, tfm=None))
    nfs = tuple(int(o) for o in a.nfs.split(','))
    model = fmnist_classifier_model(nfs).apply(partial(init_weights, leaky=0.1))
    print(f'{sum(p.numel() for p in model.parameters()):,} parameters, {len(xtr):,} training images, {a.epochs} epochs', flush=True)
    sched = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=a.lr, total_steps=a.epochs * len(dls.train))
    aug_g = torch.Generator().manual_seed(a.seed + 1)
    aug = BatchTransformCB(lambda b: (rand_crop_flip(b[0], padding=1, generator=aug_g), b[1]), on_val=False)
    metrics = MetricsCB(accuracy=Accuracy())
    learn = TrainLearner(model, dls, F.cross_entropy, lr=a.lr, opt_func=partial(Adam, wd=1e-5),
                         cbs=[DeviceCB(a.device), metrics, ProgressCB(), aug, BatchSchedCB(sched)])
    t = time.perf_counter()
    learn.fit(a.epochs)
    acc = float(metrics.metrics['accuracy'].compute())
    model = model.cpu().eval()
    print(f'test accuracy {acc:.4f} after {a.epochs} epochs in {time.perf_counter() - t:.0f}s', flush=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_write(a.out, partial(torch.save, {'nfs': list(nfs), 'model': state, 'test_acc': acc, 'epochs': a.epochs}))
    print(f'wrote {a.out} ({os.path.getsize(a.out) / 1e6:.2f} MB)')


if __name__ == '__main__':
    main()
