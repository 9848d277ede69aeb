"""Sampler overhead: miniai.diffusion's samplers against k-diffusion's and diffusers' on the same model, noise and steps.

Our `sample_euler`, `sample_euler_ancestral`, `sample_heun`, `sample_lms` and `sample_dpmpp_2m` run against
`k_diffusion.sampling`'s functions of the same name on the same denoiser (`EpsDenoiser` around a small `EmbUNetModel`), the
same Karras sigmas and the same noise; our `ddim_sample` runs against a plain loop over diffusers' `DDIMScheduler.step`
(`clip_sample=False`, `set_alpha_to_one=True`, `timestep_spacing='leading'`) with the same timesteps. The model is small
but real (32x32, batch 64), so that, as in use, it dominates: the ratio shows what each sampler's own Python and tensor
arithmetic adds (per-step host synchronisations, scalar tensor maths, extra kernels). Each pair's outputs are checked to
agree first; the times are medians over interleaved repetitions in one run.

Usage: python bench/sampler_overhead.py [--device cpu|cuda] [--quick] [--reps N] [--bs N] [--steps N] [--ddim-steps N] [--threads N]
       --quick: a smaller U-Net, batch 16, 5 steps (10 for DDIM), 3 repetitions: under two minutes on a CPU.
"""
import argparse, importlib, importlib.util, statistics, sys, time, types

import torch

from miniai.conv import def_device
import miniai.diffusion as ours_samplers   # sample_euler, ..., sample_dpmpp_2m looked up by name below
from miniai.diffusion import (EmbUNetModel, EpsDenoiser, ddim_sample, linear_sched, sigmas_karras)


def kdiff_sampling():
    "`k_diffusion.sampling` without k-diffusion's heavy package __init__ (it pulls in clip, wandb, ...), or exit."
    if importlib.util.find_spec('k_diffusion') is None: sys.exit("k-diffusion is not installed: pip install --no-deps k-diffusion")
    if 'k_diffusion.sampling' not in sys.modules:
        pkg = types.ModuleType('k_diffusion')
        pkg.__path__ = list(importlib.util.find_spec('k_diffusion').submodule_search_locations)
        sys.modules.setdefault('k_diffusion', pkg)
    return importlib.import_module('k_diffusion.sampling')


def sync(device):
    if str(device).startswith('cuda'): torch.cuda.synchronize()


def timed(f, device):
    "Seconds taken by one call of `f`, device work included."
    sync(device)
    t = time.perf_counter()
    f()
    sync(device)
    return time.perf_counter() - t


def compare(ours, ref, reps, device):
    "Median seconds of `ours` and `ref` over `reps` interleaved calls (the order alternates), after one warm-up call each."
    ours(); ref()
    to, tr = [], []
    for r in range(reps):
        if r % 2: tr.append(timed(ref, device)); to.append(timed(ours, device))
        else: to.append(timed(ours, device)); tr.append(timed(ref, device))
    return statistics.median(to), statistics.median(tr)


def count_syncs(f, device):
    "How many synchronizing CUDA calls (torch's sync debug mode: .item(), bool() of a device tensor, blocking copies) one call of `f` makes; None off CUDA."
    if device.type != 'cuda': return None
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try: f()
        finally: torch.cuda.set_sync_debug_mode('default')
    return sum('synchroniz' in str(w.message) for w in caught)


class OpCount:
    "Count the ATen ops a call dispatches outside the model: kernels on batch tensors, ops on 0-d tensors (each a tiny kernel on a GPU), scalar reads (.item()/bool(): each a host sync on a GPU)."
    def __init__(self): self.batch = self.scalar = self.reads = 0; self.paused = False
    def around(self, model):
        "`model` with its own ops left out of the count."
        def f(*args, **kwargs):
            self.paused = True
            try: return model(*args, **kwargs)
            finally: self.paused = False
        return f
    def __call__(self, f):
        from torch.utils._python_dispatch import TorchDispatchMode
        count = self
        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if count.paused or func.is_view: return out
                if func is torch.ops.aten._local_scalar_dense.default: count.reads += 1
                else:
                    ts = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
                    if any(t.numel() > 1 for t in ts): count.batch += 1
                    else: count.scalar += 1
                return out
        with Mode(): f()
        return self


def rel_diff(a, b):
    "max |a - b| / max |b|."
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12)).item()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default=def_device)
    p.add_argument('--quick', action='store_true', help='small U-Net, batch 16, few steps and repetitions (CPU: < 2 min)')
    p.add_argument('--reps', type=int, default=None, help='timed repetitions per sampler (default 7, quick 3)')
    p.add_argument('--bs', type=int, default=None, help='batch size (default 64, quick 16)')
    p.add_argument('--steps', type=int, default=None, help='Karras sampler steps (default 20, quick 5)')
    p.add_argument('--ddim-steps', type=int, default=None, help='DDIM steps (default 50, quick 10)')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: 1 on CPU, steadier on a shared machine; 0: torch default)')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    threads = (1 if str(a.device).startswith('cpu') else 0) if a.threads is None else a.threads
    if threads: torch.set_num_threads(threads)
    q = a.quick
    reps, bs = a.reps or (3 if q else 7), a.bs or (16 if q else 64)
    steps, ddim_steps = a.steps or (5 if q else 20), a.ddim_steps or (10 if q else 50)
    dev = torch.device(a.device)
    K = kdiff_sampling()
    from diffusers import DDIMScheduler

    torch.manual_seed(a.seed)
    nfs = (16, 32, 64) if q else (32, 64, 128, 256)
    unet = EmbUNetModel(1, 1, nfs=nfs, num_layers=1 if q else 2, attn_chans=8, attn_start=len(nfs) - 1).to(dev).eval()
    for p_ in unet.parameters(): p_.requires_grad_(False)
    sched = linear_sched()
    den = EpsDenoiser(unet, sched).to(dev)
    g = torch.Generator().manual_seed(a.seed + 1)
    xk, xd = torch.randn(bs, 1, 32, 32, generator=g).to(dev), torch.randn(bs, 1, 32, 32, generator=g).to(dev)
    noise = [torch.randn(bs, 1, 32, 32, generator=g).to(dev) for _ in range(2 * max(steps, ddim_steps))]

    def karras_pair(name, n, model=den):
        "Ours and k-diffusion's sampler `name` over n Karras steps, on `model`, the same start and the same pre-drawn noise."
        sigmas = sigmas_karras(n, float(den.sigma_min), float(den.sigma_max), device=dev)
        x = xk * sigmas[0].item()
        def ns():
            it = iter(noise)
            return dict(noise_sampler=lambda sigma, sigma_next: next(it)) if name == 'sample_euler_ancestral' else {}
        ours_f, ref_f = getattr(ours_samplers, name), getattr(K, name)
        return (lambda m=model: ours_f(m, x, sigmas, **ns())), (lambda m=model: ref_f(m, x, sigmas, disable=True, **ns()))

    def ddim_pair(n, model=unet):
        "Our ddim_sample and a loop over diffusers' DDIMScheduler.step, n steps, the same timesteps and start."
        sch = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule='linear', clip_sample=False,
                            set_alpha_to_one=True, timestep_spacing='leading')
        sch.set_timesteps(n)
        ts = [int(t) for t in sch.timesteps]
        @torch.no_grad()
        def ref(m=model):
            xr = xd
            for t in ts: xr = sch.step(m(xr, torch.full((bs,), t, device=dev, dtype=torch.long)), t, xr).prev_sample
            return xr
        return (lambda m=model: ddim_sample(m, xd, sched, ts)), ref

    def op_profile(pair, n, model):
        "Per-step op counts (batch, 0-d, reads) of ours and the reference: the difference between runs of 2n and n steps, over n."
        res = []
        for i in (0, 1):
            f1, f2 = pair(n)[i], pair(2 * n)[i]
            c1, c2 = OpCount(), OpCount()
            c1(lambda: f1(c1.around(model))); c2(lambda: f2(c2.around(model)))
            res.append([(b - a) / n for a, b in zip((c1.batch, c1.scalar, c1.reads), (c2.batch, c2.scalar, c2.reads))])
        return res

    dname = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'cpu, {torch.get_num_threads()} threads'
    print(f"device: {dname}; torch {torch.__version__}; U-Net nfs={nfs}, {sum(p_.numel() for p_ in unet.parameters()):,} parameters; "
          f"batch {bs} of 1x32x32; median of {reps} interleaved repetitions", flush=True)
    rows, ops = [], []
    names = ('sample_euler', 'sample_euler_ancestral', 'sample_heun', 'sample_lms', 'sample_dpmpp_2m', 'ddim_sample')
    for name in names:
        n = ddim_steps if name == 'ddim_sample' else steps
        pair = ddim_pair if name == 'ddim_sample' else (lambda k, m=None, name=name: karras_pair(name, k) if m is None else karras_pair(name, k, m))
        ours, ref = pair(n)
        d = rel_diff(ours(), ref())
        # DDIM: diffusers keeps its cumulative alphas in float32 (ours: float64); Karras: the sigma arithmetic runs in float64 here
        assert d < 1e-3, f"{name}: ours and the reference differ by {d:.2e} (relative)"
        to, tr = compare(ours, ref, reps, dev)
        label = f'{name} ({"diffusers DDIMScheduler.step loop" if name == "ddim_sample" else "k-diffusion"})'
        rows.append((label, n, to, tr, d, count_syncs(ours, dev), count_syncs(ref, dev)))
        ops.append((name, op_profile(pair, n, unet if name == 'ddim_sample' else den)))
        print(f'{name}: {to:.3f}s vs {tr:.3f}s, rel. diff {d:.1e}', flush=True)

    cuda = dev.type == 'cuda'
    print('\n| sampler (reference) | steps | ours s/sample | reference s/sample | ratio | max rel. diff |' + (' host syncs per call, ours / ref |' if cuda else ''))
    print('|---|---|---|---|---|---|' + ('---|' if cuda else ''))
    for name, n, to, tr, d, so, sr in rows:
        print(f'| {name} | {n} | {to / bs:.2e} | {tr / bs:.2e} | {to / tr:.3f} | {d:.1e} |' + (f' {so} / {sr} |' if cuda else ''))
    print('\nWhat each sampler dispatches per step besides the model, ours / reference: ATen ops counted with a dispatch mode (the')
    print('difference between runs of 2n and n steps, over n), the same on any device. On a GPU each op on a batch tensor or on a')
    print('0-d device tensor is a kernel launch, and each scalar read (.item(), bool() of a tensor) a host synchronisation.')
    print("diffusers keeps its schedule on the CPU, so its 0-d ops and reads are host arithmetic.\n")
    print('| sampler | batch-tensor ops/step | 0-d tensor ops/step | scalar reads/step |')
    print('|---|---|---|---|')
    f = lambda v: f'{v:.1f}'.rstrip('0').rstrip('.')
    for name, (o, r) in ops:
        print(f'| {name} | {f(o[0])} / {f(r[0])} | {f(o[1])} / {f(r[1])} | {f(o[2])} / {f(r[2])} |')


if __name__ == '__main__': main()
