"""Speed of miniai's from-scratch `conv2d` (im2col + matmul) against `F.conv2d`; prints a table.

Usage: python bench/conv.py [--device cpu|cuda] [--reps N]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from miniai.conv import conv2d, def_device


def bench(f, reps, device):
    "Median seconds per call of `f` over `reps` timed calls after two warm-up calls."
    for _ in range(2): f()
    times = []
    for _ in range(reps):
        if device.startswith('cuda'): torch.cuda.synchronize()
        t = time.perf_counter()
        f()
        if device.startswith('cuda'): torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default=def_device)
    p.add_argument('--reps', type=int, default=10)
    a = p.parse_args()
    shapes = [  # (N, C, H, W, nf, ks, stride, padding)
        (64, 1, 28, 28, 8, 3, 2, 1),
        (64, 16, 14, 14, 32, 3, 1, 1),
        (32, 64, 32, 32, 64, 3, 1, 1),
        (16, 3, 64, 64, 32, 5, 2, 2),
    ]
    print(f"device: {a.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'input (N,C,H,W)':>18} {'weight':>14} {'s':>2} {'p':>2} {'im2col ms':>10} {'F.conv2d ms':>12} {'ratio':>6} {'max |diff|':>11}")
    for n, c, h, w, nf, ks, s, pd in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, w, generator=g).to(a.device)
        wt = torch.randn(nf, c, ks, ks, generator=g).to(a.device)
        b = torch.randn(nf, generator=g).to(a.device)
        ours = bench(lambda: conv2d(x, wt, b, s, pd), a.reps, a.device)
        ref = bench(lambda: F.conv2d(x, wt, b, stride=s, padding=pd), a.reps, a.device)
        diff = (conv2d(x, wt, b, s, pd) - F.conv2d(x, wt, b, stride=s, padding=pd)).abs().max().item()
        print(f"{str((n, c, h, w)):>18} {str((nf, c, ks, ks)):>14} {s:>2} {pd:>2} {ours*1e3:>10.2f} {ref*1e3:>12.2f} "
              f"{ours/ref:>6.1f} {diff:>11.1e}")


if __name__ == '__main__': main()
