"""Time the from-scratch matmuls of `miniai.scratch.matmul` against `torch.matmul`.

Prints, for a few square sizes, the best time of several runs of each version and how many
times slower it is than `torch.matmul` measured in the same run. Usage:

    python bench/matmul.py [--sizes 16 64 256 512] [--repeats 5] [--max-loops 32] [--dtype float32]
"""
import argparse
import time

import torch

from miniai.scratch.matmul import matmul_broadcast, matmul_cuda, matmul_einsum, matmul_loops, matmul_numba


def best_ms(f, a, b, repeats, sync):
    "Best wall time of `repeats` calls of `f(a, b)`, in milliseconds (after one warm-up call)."
    f(a, b); sync()
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter(); f(a, b); sync(); best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[16, 64, 256, 512])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--max-loops', type=int, default=32, help='largest size timed with the triple Python loop')
    p.add_argument('--max-broadcast', type=int, default=1024, help='largest size timed with the broadcasting loop')
    p.add_argument('--dtype', default='float32', choices=['float32', 'float64'])
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)

    try:
        import numba  # noqa: F401
        has_numba = True
    except ImportError:
        has_numba = False
    has_cuda = torch.cuda.is_available()
    if has_cuda:
        from numba import cuda
        has_cuda = cuda.is_available()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, dtype {args.dtype}, "
          f"best of {args.repeats} runs" + (f", GPU {torch.cuda.get_device_name()}" if has_cuda else ", no GPU"))
    print(f"{'size':>6}  {'method':<18}{'ms':>12}{'x torch.matmul':>16}")
    cpu_sync = lambda: None
    for n in args.sizes:
        a, b = torch.randn(n, n, generator=g, dtype=dtype), torch.randn(n, n, generator=g, dtype=dtype)
        rows = [('torch.matmul', torch.matmul, a, b, cpu_sync)]
        if n <= args.max_loops: rows.append(('matmul_loops', matmul_loops, a, b, cpu_sync))
        if n <= args.max_broadcast: rows.append(('matmul_broadcast', matmul_broadcast, a, b, cpu_sync))
        rows.append(('matmul_einsum', matmul_einsum, a, b, cpu_sync))
        if has_numba: rows.append(('matmul_numba', matmul_numba, a, b, cpu_sync))
        if has_cuda:
            ac, bc = a.to('cuda'), b.to('cuda')
            sync = torch.cuda.synchronize
            rows += [('torch.matmul (gpu)', torch.matmul, ac, bc, sync), ('matmul_cuda (gpu)', matmul_cuda, ac, bc, sync)]
        base = {}
        for name, f, x, y, sync in rows:
            reps = 1 if name == 'matmul_loops' else args.repeats
            ms = best_ms(f, x, y, reps, sync)
            ref = base.setdefault(x.device.type, ms)  # the first row on each device is torch.matmul there
            print(f"{n:>6}  {name:<18}{ms:12.4f}{ms / ref:16.1f}")


if __name__ == '__main__':
    main()
