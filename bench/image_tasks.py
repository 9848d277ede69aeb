"""Full runs of the derived image tasks on Fashion-MNIST (notebooks 44 and 45), each on the shipped pretrained classifier's body.

- multi-label: 10,000 training mosaics (2-4 items in a 2x2 grid, multi-hot labels) and 2,000 validation mosaics made from
  the test images; `vision_learner(..., loss_func=bce_multi)`, `fine_tune(epochs)`, then the threshold chosen on the
  validation set (`best_threshold`): accuracy_multi and F2 (samples) at 0.5 and at that threshold.
- regression: 10,000 canvases with one item at a random place (its centre scaled to [-1, 1] is the target), `y_range=(-1, 1)`,
  MSE, `fine_tune(epochs)`: mean absolute error of the centre in pixels, against always predicting the canvas centre.
- segmentation: `unet_learner` on 5,000 training mosaics' per-pixel masks (11 classes with the background),
  `fine_tune(epochs)`: pixel accuracy and mean IoU on 1,000 validation mosaics.

Run:  .venv/bin/python bench/image_tasks.py [--tasks multilabel regression segmentation] [--epochs 4] [--base-lr 1e-2]
Prints one markdown table.
"""
import argparse
import time

import torch

from miniai.datasets import load_fashion_mnist, dataset_tensors, FMNIST_CLASSES
from miniai.vision import image_dls, vision_learner
from miniai.multilabel import AccuracyMulti, FBetaMulti, accuracy_multi, bce_multi, best_threshold, fbeta_multi, make_mosaics, make_point_data
from miniai.segmentation import unet_learner
import miniai.interpret  # noqa: F401 (get_preds)


def multilabel(xt, yt, xv, yv, epochs, lr):
    g = torch.Generator().manual_seed(0)
    (mx, my, _), (vx, vy, _) = make_mosaics(xt, yt, 10000, generator=g), make_mosaics(xv, yv, 2000, generator=g)
    dls = image_dls((mx, my), (vx, vy), bs=64, vocab=FMNIST_CLASSES, generator=g)
    torch.manual_seed(0)
    learn = vision_learner(dls, 'fmnist_classifier', device='cpu', loss_func=bce_multi, task='multi_label', progress=False,
                           metrics={'acc_multi': AccuracyMulti(), 'f2': FBetaMulti(2.)})
    learn.fine_tune(epochs, base_lr=lr)
    p, t = learn.get_preds()
    th, acc = best_threshold(p, t)
    return [('multi-label', 'accuracy_multi at 0.5', float(accuracy_multi(p, t, sigmoid=False))),
            ('multi-label', f'accuracy_multi at the chosen threshold {th:.2f}', acc),
            ('multi-label', 'F2 (samples) at 0.5', float(fbeta_multi(p, t, sigmoid=False))),
            ('multi-label', f'F2 (samples) at {th:.2f}', float(fbeta_multi(p, t, thresh=th, sigmoid=False))),
            ('multi-label', 'accuracy_multi of predicting no class', 1 - t.mean().item())]


def regression(xt, yt, xv, yv, epochs, lr):
    g = torch.Generator().manual_seed(1)
    (px, pt), (vx, vt) = make_point_data(xt, 10000, generator=g), make_point_data(xv, 2000, generator=g)
    dls = image_dls((px, pt), (vx, vt), bs=64, generator=g)
    torch.manual_seed(0)
    learn = vision_learner(dls, 'fmnist_classifier', n_out=2, y_range=(-1, 1), device='cpu', progress=False)
    learn.fine_tune(epochs, base_lr=lr)
    p, t = learn.get_preds()
    return [('regression', 'mean abs. error of the centre (pixels)', float((p - t).abs().mean() * 28)),
            ('regression', 'the same, always predicting the canvas centre', float(t.abs().mean() * 28))]


def segmentation(xt, yt, xv, yv, epochs, lr):
    g = torch.Generator().manual_seed(2)
    (mx, _, mm), (vx, _, vm) = make_mosaics(xt, yt, 5000, generator=g), make_mosaics(xv, yv, 1000, generator=g)
    dls = image_dls((mx, mm), (vx, vm), bs=32, vocab=['background', *FMNIST_CLASSES], generator=g)
    torch.manual_seed(0)
    learn = unet_learner(dls, 'fmnist_classifier', device='cpu', progress=False)
    learn.fine_tune(epochs, base_lr=lr)
    h = learn.history[-1]
    p, t = learn.get_preds()
    return [('segmentation', 'pixel accuracy', float(h['pixel_acc'])), ('segmentation', 'mean IoU (11 classes)', float(h['miou'])),
            ('segmentation', 'pixel accuracy of all background', float((t == 0).double().mean()))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tasks', nargs='+', default=['multilabel', 'regression', 'segmentation'])
    ap.add_argument('--epochs', type=int, default=4)
    ap.add_argument('--base-lr', type=float, default=1e-2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    dd = load_fashion_mnist()
    (xt, yt), (xv, yv) = dataset_tensors(dd['train']), dataset_tensors(dd['test'])
    rows, t0 = [], time.perf_counter()
    for task in a.tasks:
        t1 = time.perf_counter()
        rows += [(*r, time.perf_counter() - t1) for r in globals()[task](xt, yt, xv, yv, a.epochs, a.base_lr)]
        print(f"# {task} done ({time.perf_counter() - t1:.0f} s)", flush=True)
    print(f"\nfine_tune({a.epochs}, base_lr={a.base_lr:g}) on the pretrained Fashion-MNIST body\n")
    print("| task | measure | value |\n|---|---|---|")
    for task, m, v, _ in rows: print(f"| {task} | {m} | {v:.4f} |")
    print(f"\nwall-clock {time.perf_counter() - t0:.0f} s, 1 thread")


if __name__ == '__main__':
    main()
