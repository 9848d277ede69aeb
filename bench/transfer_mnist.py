"""Transfer learning that is real here: miniai's Fashion-MNIST classifier fine-tuned on a small slice of MNIST, against the same network from scratch.

Both runs use the same architecture (`vision_learner(dls, 'fmnist_classifier', lin_ftrs=[128])`), the same training images
(a seeded random slice of MNIST's 50,000 training images), the same number of epochs and batch size; validation is on
the 10,000 MNIST test images. "fine_tune" is `learn.fine_tune(epochs - 1, base_lr=lr, freeze_epochs=1)` from the
pretrained body; "scratch" is `learn.fit_one_cycle(epochs, lr)` from random weights.

Run:  .venv/bin/python bench/transfer_mnist.py [--n-train 1000] [--epochs 5] [--seeds 0 1 2] [--lrs 2e-3 1e-2]
Prints one markdown table: mean and spread (min-max) of the final validation accuracy over the seeds.
"""
import argparse
import statistics
import time

import torch

from miniai.vision import image_dls, load_mnist, vision_learner


def run(mn, pretrained, n_train, epochs, lr, seed, bs=64):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(mn['train'][0]), generator=g)[:n_train]
    trn, val = (mn['train'][0][idx], mn['train'][1][idx]), mn['test']
    torch.manual_seed(seed)
    dls = image_dls(trn, val, bs=bs, vocab=[str(i) for i in range(10)], generator=torch.Generator().manual_seed(seed), valid_bs=1000)
    learn = vision_learner(dls, 'fmnist_classifier', pretrained=pretrained, lin_ftrs=[128], device='cpu', progress=False)
    if pretrained: learn.fine_tune(epochs - 1, base_lr=lr, freeze_epochs=1)
    else: learn.fit_one_cycle(epochs, lr)
    return float(learn.history[-1]['accuracy'])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n-train', type=int, default=1000)
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--lrs', type=float, nargs='+', default=[2e-3, 1e-2])
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mn = load_mnist()
    t0 = time.perf_counter()
    rows = []
    for lr in a.lrs:
        for pretrained in (True, False):
            accs = [run(mn, pretrained, a.n_train, a.epochs, lr, s) for s in a.seeds]
            rows.append((('fine_tune (Fashion-MNIST body)' if pretrained else 'from scratch'), lr, accs))
            print(f"# {rows[-1][0]} lr={lr:g}: {accs}", flush=True)
    print(f"\nMNIST, {a.n_train} training images, {a.epochs} epochs, bs 64, validation: the 10,000 test images, seeds {a.seeds}")
    print("| training | lr | accuracy (mean) | min - max |\n|---|---|---|---|")
    for nm, lr, accs in rows: print(f"| {nm} | {lr:g} | {statistics.mean(accs):.4f} | {min(accs):.4f} - {max(accs):.4f} |")
    print(f"\nwall-clock {time.perf_counter() - t0:.0f} s, {a.threads} thread(s)")


if __name__ == '__main__':
    main()
