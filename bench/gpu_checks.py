"""Checks of miniai's CUDA paths, for a machine with a GPU: each prints PASS or FAIL with its numbers.

CI has no GPU, so these paths are only exercised here: the CUDA-only pytest tests (numba-CUDA matmul, mean shift on the
GPU), float16 `MixedPrecision` with its gradient scaler and bfloat16 autocast through the Learner, a checkpoint resume
on the GPU (CUDA RNG state included), `EMA` on the GPU, the samplers with a half-precision `x`, and `lr_find`.

Run: python bench/gpu_checks.py   (about half a minute on one GPU)
"""
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')   # lets cuBLAS run deterministically (the resume check)
RESULTS = []
DEV = 'cuda' if torch.cuda.is_available() else 'cpu'   # on a CPU the script is only a dry run of itself


def check(fn):
    "Run one check, record PASS/FAIL and its message."
    t = time.perf_counter()
    try:
        msg = fn() or ''
        RESULTS.append(('PASS', fn.__name__, msg))
    except Exception as e:
        RESULTS.append(('FAIL', fn.__name__, f'{type(e).__name__}: {e}'))
        traceback.print_exc()
    print(f'{RESULTS[-1][0]} {fn.__name__} ({time.perf_counter() - t:.1f}s) {RESULTS[-1][2]}', flush=True)
    return fn


def data(n=4096, seed=0, device=None):
    "A learnable 10-class problem on 1x28x28 inputs, as train/valid lists of batches on `device`."
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    x = protos[y] + 0.8 * torch.randn(n, 1, 28, 28, generator=g)
    x, y = x.to(device or DEV), y.to(device or DEV)
    bs = 256
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]
    return SimpleNamespace(train=batches[:-2], valid=batches[-2:])


def cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@check
def pytest_cuda_tests():
    if os.environ.get('SKIP_PYTEST'): return 'skipped (SKIP_PYTEST set)'
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests/test_matmul.py',
                        'tests/test_meanshift.py', 'tests/test_conv.py', '-k', 'cuda or gpu or device'],
                       capture_output=True, text=True, timeout=300)
    print(r.stdout[-3000:], r.stderr[-2000:])
    last = (r.stdout.strip().splitlines() or [''])[-1]
    if r.returncode != 0: raise AssertionError(last)
    return last


def _train(cbs, epochs=3, seed=0):
    from miniai.learner import Learner, MetricsCB, Accuracy, DeviceCB
    torch.manual_seed(seed)
    m = MetricsCB(acc=Accuracy())
    learn = Learner(cnn(), data(), F.cross_entropy, lr=3e-3, opt_func=torch.optim.AdamW, cbs=[DeviceCB(DEV), m, *cbs])
    learn.fit(epochs)
    return learn, float(m.all_metrics['acc'].compute())


@check
def mixed_precision_fp16_with_grad_scaler():
    from miniai.accel import MixedPrecision
    mp = MixedPrecision(None if DEV == 'cuda' else 'fp16')   # float16 on CUDA by default, with a GradScaler
    learn, acc = _train([mp])
    assert mp.dt == torch.float16 and mp.scaler is not None, (mp.dt, mp.scaler)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in learn.model.parameters())
    from miniai.learner import TrainCB
    _, acc32 = _train([TrainCB()])
    assert acc > 0.9 and abs(acc - acc32) < 0.05, (acc, acc32)
    return f'valid accuracy fp16 {acc:.3f} vs float32 {acc32:.3f}, loss scale {mp.scaler.get_scale():.0f}'


@check
def mixed_precision_bf16():
    from miniai.accel import MixedPrecision
    mp = MixedPrecision('bf16')
    learn, acc = _train([mp])
    assert mp.scaler is None and acc > 0.9, acc
    return f'valid accuracy {acc:.3f}'


@check
def checkpoint_resume_on_gpu():
    from miniai.learner import Learner, TrainCB, DeviceCB, Callback, CheckpointCB
    tmp = Path(tempfile.mkdtemp())
    class Drop(nn.Module):   # dropout draws from the CUDA RNG, which the checkpoint must restore
        def __init__(self): super().__init__(); self.m = cnn(); self.d = nn.Dropout(0.3)
        def forward(self, x): return self.m(self.d(x))
    class Crash(Callback):
        def before_batch(self, learn):
            if learn.epoch == 1 and learn.iter == 3: raise RuntimeError('crash')
    def run(path, extra=(), resume=False):
        torch.manual_seed(1)
        learn = Learner(Drop(), data(), F.cross_entropy, lr=1e-3, opt_func=torch.optim.Adam,
                        cbs=[DeviceCB(DEV), TrainCB(), CheckpointCB(path), *extra])
        learn.fit(3, resume_from=path if resume else None)
        return learn
    def maxdiff(a, b): return max((p - q).abs().max().item() for p, q in zip(a.model.parameters(), b.model.parameters()))
    # cuDNN picks nondeterministic kernels by default: two identical runs may already differ; with deterministic
    # algorithms the resumed run must equal the uninterrupted one exactly
    noise = maxdiff(run(tmp / 'n1.pt'), run(tmp / 'n2.pt'))
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True)
    try:
        full = run(tmp / 'a.pt')
        try: run(tmp / 'b.pt', [Crash()])
        except RuntimeError: pass
        resumed = run(tmp / 'b.pt', resume=True)
        diff = maxdiff(full, resumed)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert diff == 0, f'deterministic algorithms: resumed vs uninterrupted max diff {diff} (default algorithms, two fresh runs: {noise})'
    return f'deterministic algorithms: resumed == uninterrupted exactly; default algorithms, two fresh runs differ by {noise:.2g}'


@check
def ema_on_gpu():
    from miniai.ema import EMA
    ema = EMA(0.99)
    from miniai.learner import TrainCB
    learn, _ = _train([TrainCB(), ema], epochs=1)
    e = next(ema.ema_model.parameters())
    assert e.device.type == DEV and ema.n == len(learn.dls.train), (e.device, ema.n)
    return f'{ema.n} updates on {e.device}'


@check
def samplers_half_precision_x():
    from miniai.diffusion import linear_sched, ddim_sample, EpsDenoiser, sample_dpmpp_2m, sigmas_karras
    sched = linear_sched()
    model = lambda x, t: 0.1 * x.float().tanh().to(x.dtype)   # any smooth eps-model
    out = {}
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(DEV).to(dt)
        a = ddim_sample(model, x, sched, list(range(999, -1, -50)))
        den = EpsDenoiser(model, sched).to(DEV)
        s = sigmas_karras(10, float(den.sigma_min), float(den.sigma_max), device=DEV)
        b = sample_dpmpp_2m(den, x.float() * s[0], s)
        out[dt] = (a.float(), torch.isfinite(a.float()).all().item(), a.dtype, b)
    ok = all(v[1] for v in out.values())
    ref = out[torch.float32][0]
    err = ((out[torch.float16][0] - ref).abs().max() / ref.abs().max()).item()   # relative to the sample's scale
    msg = f'ddim finite for float32/16/bf16: {[v[1] for v in out.values()]}; fp16 vs fp32 max relative diff {err:.3g}; dtypes {[str(v[2]) for v in out.values()]}'
    if not ok or err > 0.02: raise AssertionError(msg)
    return msg


@check
def lr_find_on_gpu():
    import matplotlib
    matplotlib.use('Agg')
    from miniai.learner import Learner, TrainCB, DeviceCB
    torch.manual_seed(0)
    learn = Learner(cnn(), data(), F.cross_entropy, opt_func=torch.optim.AdamW, cbs=[DeviceCB(DEV), TrainCB()])
    s = learn.lr_find(plot=False)
    return f'{s}'


if __name__ == '__main__':
    print(f'torch {torch.__version__}, {torch.cuda.get_device_name() if DEV == "cuda" else "CPU (dry run)"}')
    print('\n| check | result | details |\n|---|---|---|')
    for r, n, m in RESULTS: print(f'| {n} | {r} | {m} |')
    sys.exit(int(any(r == 'FAIL' for r, _, _ in RESULTS)))
