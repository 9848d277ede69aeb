"""miniai.accel: mixed precision on CPU, AccelerateCB against the plain training step, and a 2-process DDP run."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from miniai.accel import MixedPrecision, AccelerateCB
from miniai.datasets import DataLoaders
from miniai.learner import Learner, TrainCB, DeviceCB, SingleBatchCB, Callback, CancelBatchException
from miniai.sgd import Adam

ROOT = Path(__file__).resolve().parents[1]


def _data(n=64, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 10, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)
    return DataLoaders(DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x, y), batch_size=32))


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)).to(dtype)


def test_mixed_precision_bf16_cpu_step_matches_fp32_roughly():
    dls = _data()
    m_ref, m_mp = _model(), _model()
    Learner(m_ref, dls, F.cross_entropy, lr=0.1, cbs=[TrainCB()]).fit(1, valid=False, cbs=SingleBatchCB())
    learn = Learner(m_mp, dls, F.cross_entropy, lr=0.1, cbs=[DeviceCB('cpu'), MixedPrecision('bf16')])
    learn.fit(1, valid=False, cbs=SingleBatchCB())
    assert learn.preds.dtype == torch.bfloat16          # the forward pass ran in bf16
    assert m_mp[0].weight.dtype == torch.float32         # weights stay fp32
    assert not torch.is_autocast_enabled('cpu')          # autocast was exited
    # one SGD step from the same start: bf16 has ~3 significant digits
    moved = (m_ref[0].weight - _model()[0].weight).abs().max()
    assert moved > 1e-3
    torch.testing.assert_close(m_mp[0].weight, m_ref[0].weight, rtol=0, atol=0.05*moved.item())


def test_mixed_precision_default_dtype_and_validation_pass():
    learn = Learner(_model(), _data(), F.cross_entropy, lr=0.1, cbs=[MixedPrecision()])
    learn.fit(1)
    cb = learn.cbs[0]
    assert cb.dt == torch.bfloat16 and cb.scaler is None   # CPU default: bf16, no scaler
    assert not torch.is_autocast_enabled('cpu')


def test_mixed_precision_fp16_uses_grad_scaler():
    learn = Learner(_model(), _data(), F.cross_entropy, lr=0.1, cbs=[MixedPrecision(torch.float16)])
    try: learn.fit(1, valid=False, cbs=SingleBatchCB())
    except RuntimeError as e:
        if 'not implemented' in str(e).lower() or 'not supported' in str(e).lower(): pytest.skip(f"fp16 autocast on CPU: {e}")
        raise
    cb = learn.cbs[0]
    assert isinstance(cb.scaler, torch.amp.GradScaler) and cb.scaler.get_scale() > 1
    assert learn.preds.dtype == torch.float16


def test_mixed_precision_leaves_autocast_when_batch_cancelled():
    class CancelAfterPredict(Callback):
        def after_predict(self, learn): raise CancelBatchException()
    learn = Learner(_model(), _data(), F.cross_entropy, lr=0.1, cbs=[MixedPrecision('bf16'), CancelAfterPredict()])
    learn.fit(1)
    assert not torch.is_autocast_enabled('cpu')


@pytest.mark.parametrize("bad,exc", [('fp8', ValueError), (torch.float32, ValueError)])
def test_mixed_precision_bad_dtype(bad, exc):
    with pytest.raises(exc, match="dtype must be"): MixedPrecision(bad)


def test_accelerate_cb_single_process_matches_train_cb():
    "In one process, AccelerateCB must take exactly the steps of the plain TrainCB (float64)."
    dls = _data(dtype=torch.float64)
    m1, m2 = _model(torch.float64), _model(torch.float64)
    Learner(m1, dls, F.cross_entropy, lr=1e-2, cbs=[TrainCB()], opt_func=Adam).fit(2)
    learn = Learner(m2, dls, F.cross_entropy, lr=1e-2, cbs=[AccelerateCB(mixed_precision='no', cpu=True)], opt_func=Adam)
    learn.fit(2)
    assert learn.model is m2 and dls.train.__class__ is DataLoader   # originals given back
    for a, b in zip(m1.parameters(), m2.parameters()): torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(m1[0].weight, _model(torch.float64)[0].weight)


def _run(args, out, env, timeout=180):
    "Run `args` in its own process group; on a hang, kill the whole group (launcher and ranks) and fail."
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try: stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        pytest.fail(f"{' '.join(map(str, args))} hung for {timeout}s:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    assert p.returncode == 0, f"{' '.join(map(str, args))} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"


def test_two_process_ddp_matches_single_process(tmp_path):
    """2 CPU processes (torchrun, gloo) with AccelerateCB: identical weights on both ranks, equal to one process over the same global batches."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    env.pop('CUDA_VISIBLE_DEVICES', None)
    script = str(ROOT/'tests'/'ddp_script.py')
    _run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', script, str(tmp_path), '16'],
         tmp_path, env)
    _run([sys.executable, script, str(tmp_path), '16'], tmp_path, env)
    r0, r1, single = (torch.load(tmp_path/f'{n}.pt', weights_only=True) for n in ('rank0_world2', 'rank1_world2', 'rank0_world1'))
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1)).double().state_dict()
    for k in single:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
        # float64: the all-reduced mean of two half-batch gradients equals the full-batch gradient to rounding
        torch.testing.assert_close(r0[k], single[k], rtol=1e-10, atol=1e-12)
        assert not torch.allclose(single[k], init[k])   # it trained
