"""Transfer learning that is real here: miniai's Fashion-MNIST classifier fine-tuned on a small slice of MNIST, against the same network from scratch.

All runs use the same architecture (`vision_learner(dls, 'fmnist_classifier', lin_ftrs=[128])`), a seeded random slice
of MNIST's 50,000 training images, the same number of epochs and batch size 64. The accuracy is measured at the end on
all 10,000 MNIST test images (`get_preds`); during training the learner validates on the first 500 test images only.
  fine_tune : from the pretrained body, `learn.fine_tune(epochs - 1, base_lr=lr, freeze_epochs=1)` (fastai's defaults otherwise)
  scratch   : from random weights, `learn.fit_one_cycle(epochs, lr)`
  probe     : from the pretrained body kept frozen (BatchNorm trains), `learn.fit_one_cycle(epochs, lr)`

Run:  .venv/bin/python bench/transfer_mnist.py [--n-train 100 1000] [--epochs 10] [--seeds 0 1 2] [--lrs 2e-3 1e-2]
Prints one markdown table: mean and range (min - max) of the test accuracy over the seeds.
"""
import argparse
import statistics
import time

import torch

from miniai.mnist import load_mnist
from miniai.vision import image_dls, vision_learner
import miniai.interpret  # noqa: F401 (get_preds)
from miniai.datasets import TensorLoader


def run(mn, method, n_train, epochs, lr, seed, bs=64):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(mn['train'][0]), generator=g)[:n_train]
    trn, val = (mn['train'][0][idx], mn['train'][1][idx]), (mn['test'][0][:500], mn['test'][1][:500])
    torch.manual_seed(seed)
    dls = image_dls(trn, val, bs=bs, vocab=[str(i) for i in range(10)], generator=torch.Generator().manual_seed(seed), valid_bs=500)
    learn = vision_learner(dls, 'fmnist_classifier', pretrained=method != 'scratch', lin_ftrs=[128], device='cpu', progress=False)
    if method == 'fine_tune': learn.fine_tune(epochs - 1, base_lr=lr, freeze_epochs=1)
    else: learn.fit_one_cycle(epochs, lr)
    p, t = learn.get_preds(TensorLoader(*mn['test'], 1000))
    return float((p.argmax(1) == t).double().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n-train', type=int, nargs='+', default=[100, 1000])
    ap.add_argument('--epochs', type=int, default=10)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--lrs', type=float, nargs='+', default=[2e-3, 1e-2])
    ap.add_argument('--methods', nargs='+', default=['fine_tune', 'scratch', 'probe'])
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mn = load_mnist()
    t0 = time.perf_counter()
    rows = []
    for n in a.n_train:
        for lr in a.lrs:
            for method in a.methods:
                accs = [run(mn, method, n, a.epochs, lr, s) for s in a.seeds]
                rows.append((n, method, lr, accs))
                print(f"# n={n} {method} lr={lr:g}: {accs}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nMNIST from a Fashion-MNIST body: {a.epochs} epochs, bs 64, test accuracy on the 10,000 MNIST test images, seeds {a.seeds}")
    print("| training images | method | lr | accuracy (mean) | min - max |\n|---|---|---|---|---|")
    for n, m, lr, accs in rows: print(f"| {n} | {m} | {lr:g} | {statistics.mean(accs):.4f} | {min(accs):.4f} - {max(accs):.4f} |")
    print(f"\nwall-clock {time.perf_counter() - t0:.0f} s, {a.threads} thread(s)")


if __name__ == '__main__':
    main()
