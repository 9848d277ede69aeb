"""Per-epoch data-loading time on Fashion-MNIST: the course's per-item `with_transform` path vs miniai's tensor path.

Run: .venv/bin/python bench/data_loading.py [--bs 256] [--repeats 2]
Prints one table; times are wall seconds for one pass over the 60k training split (batches only, no model)."""
import argparse, time

import torch
import torchvision.transforms.functional as TF

from miniai.datasets import DataLoaders, dataset_tensors, inplace, load_fashion_mnist


@inplace
def transformi(b):
    "The course's transform: PIL images to float tensors, item by item."
    b['image'] = [TF.to_tensor(o) for o in b['image']]


def epoch_time(dl):
    "Seconds to iterate `dl` once, touching every batch."
    t = time.perf_counter()
    n = 0
    for xb, yb in dl: n += len(yb)
    return time.perf_counter() - t, n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--bs', type=int, default=256)
    p.add_argument('--repeats', type=int, default=2, help='epochs timed per path (the best is reported)')
    a = p.parse_args()
    torch.set_num_threads(1)
    t = time.perf_counter(); dd = load_fashion_mnist(); t_load = time.perf_counter() - t
    t = time.perf_counter(); dataset_tensors(dd['train']); t_tensors = time.perf_counter() - t
    slow = DataLoaders.from_dd(dd.with_transform(transformi), a.bs)
    fast = DataLoaders.from_dd(dd, a.bs)
    rows = {}
    for _ in range(a.repeats):  # interleaved, so load on the machine hits both alike
        for name, dls in (('HF with_transform (course)', slow), ('miniai tensor fast path', fast)):
            s, n = epoch_time(dls.train)
            rows[name] = min(rows.get(name, float('inf')), s)
    ref = rows['miniai tensor fast path']
    print(f"Fashion-MNIST train split ({n:,} images), batch size {a.bs}, best of {a.repeats}")
    print(f"load_fashion_mnist (cached): {t_load:.3f}s; whole split as uint8 tensors: {t_tensors:.3f}s")
    print(f"{'path':<30} {'s/epoch':>9} {'vs fast':>9}")
    for name, s in rows.items(): print(f"{name:<30} {s:>9.3f} {s/ref:>8.1f}x")


if __name__ == '__main__': main()
