"Tests for miniai.ema (EMA callback), miniai.diffusion.edm (EDM training pieces, the shipped model) and accel.fast_bf16."
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from miniai.callback import Callback
from miniai.diffusion import EmbUNetModel, scalings, sigmas_karras, sample_dpmpp_2m
from miniai.diffusion.edm import EDMCB, LogSigmaCond, data_sigma, load_denoiser, save_denoiser, FMNIST_DIFFUSION
from miniai.ema import EMA
from miniai.learner import Learner, MetricsCB, TrainCB


def toy_dls(seed=0, n=256, bs=32):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)
    return SimpleNamespace(train=[(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)], valid=[(x[:64], y[:64])])


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))


# ---------------------------------------------------------------- EMA
@pytest.mark.parametrize('decay', [0.9, 0.99])
def test_ema_matches_torch_averaged_model(decay):
    model = toy_model().double()
    dls = toy_dls()
    dls.train = [(x.double(), y.double()) for x, y in dls.train]
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    ref.update_parameters(model)   # AveragedModel copies on its first update: the starting weights
    class RefUpdate(Callback):
        order = 30
        def after_step(self, learn): ref.update_parameters(learn.model)
    ema = EMA(decay, warmup=False)
    Learner(model, dls, F.mse_loss, lr=0.1, cbs=[TrainCB(), ema, RefUpdate()]).fit(3, valid=False)
    assert ema.n == 3 * len(dls.train)
    for a, b in zip(ema.ema_model.parameters(), ref.module.parameters()): torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(ema.ema_model.buffers(), model.buffers()): assert torch.equal(a, b)


def test_ema_warmup_decay_formula():
    ema = EMA(0.999)
    got = []
    for n in range(5):
        ema.n = n
        got.append(ema.current_decay())
    assert got == pytest.approx([min(0.999, (1 + n) / (10 + n)) for n in range(5)])
    ema.n = 10**6
    assert ema.current_decay() == 0.999
    with pytest.raises(ValueError, match="decay"): EMA(1.0)


def test_ema_checkpoint_round_trip_and_resume(tmp_path):
    from miniai.checkpoint import CheckpointCB
    class Crash(Callback):
        def before_batch(self, learn):
            if learn.epoch == 2 and learn.iter == 1: raise RuntimeError('crash')
    def run(path, extra=(), resume=False):
        ema = EMA(0.9)
        learn = Learner(toy_model(), toy_dls(), F.mse_loss, lr=0.05, opt_func=torch.optim.Adam,
                        cbs=[TrainCB(), ema, CheckpointCB(path), *extra])
        learn.fit(4, resume_from=path if resume else None)
        return ema
    full = run(tmp_path / 'a.pt')
    with pytest.raises(RuntimeError): run(tmp_path / 'b.pt', [Crash()])
    resumed = run(tmp_path / 'b.pt', resume=True)
    assert resumed.n == full.n
    for a, b in zip(full.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ema_validation_on_averaged_weights_and_swap_back_on_error():
    model = toy_model()
    ema = EMA(0.9, use_for_valid=True)
    learn = Learner(model, toy_dls(), F.mse_loss, lr=0.05, cbs=[TrainCB(), MetricsCB(), ema])
    learn.fit(2)
    x, y = toy_dls().valid[0]
    with torch.no_grad(): ema_loss = F.mse_loss(ema.ema_model.eval()(x), y).item()
    assert float(learn.history[-1]['loss']) == pytest.approx(ema_loss, abs=1e-3)
    raw = [p.detach().clone() for p in model.parameters()]
    class BoomInValid(Callback):
        def before_batch(self, learn):
            if not learn.training: raise RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'):
        learn.fit(1, cbs=BoomInValid())
    # the model got its own weights back (one more training epoch happened, so compare with the EMA: they differ)
    assert not ema._swapped
    assert not all(torch.equal(p, e) for p, e in zip(model.parameters(), ema.ema_model.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), raw))   # trained one more epoch


def test_ema_left_out_of_lr_find():
    import matplotlib
    matplotlib.use('Agg')
    ema = EMA(0.9)
    learn = Learner(toy_model(), toy_dls(n=1024), F.mse_loss, cbs=[TrainCB(), ema])
    learn.lr_find(plot=False)
    assert ema.n == 0 and ema.ema_model is None


# ---------------------------------------------------------------- EDM
def test_log_sigma_cond_passes_ln_sigma_over_4():
    seen = {}
    class Rec(nn.Module):
        def forward(self, x, t): seen['t'] = t; return x
    m = LogSigmaCond(Rec())
    sig = torch.tensor([0.002, 0.5, 80.])
    m(torch.zeros(3, 1, 4, 4), sig)
    torch.testing.assert_close(seen['t'], sig.log() / 4)
    m((torch.zeros(3, 1, 4, 4), sig))   # the tuple form the Learner's TrainCB uses
    with pytest.raises(ValueError, match="positive"): m(torch.zeros(1, 1, 4, 4), torch.tensor([0.]))


def test_edmcb_pairs_follow_the_preconditioning():
    x0 = torch.randn(512, 1, 4, 4, dtype=torch.float64) * 0.7
    cb = EDMCB(sig_data=0.7, generator=torch.Generator().manual_seed(0))
    learn = SimpleNamespace(batch=(x0, torch.zeros(512)))
    cb.before_batch(learn)
    (xin, sig), target = learn.batch
    c_skip, c_out, c_in = (c.reshape(-1, 1, 1, 1) for c in scalings(sig.double(), 0.7))
    x = xin / c_in                                              # the noisy image
    torch.testing.assert_close(target, (x0 - c_skip * x) / c_out)   # F's target (Karras et al. 2022, eq. 8)
    ls = sig.double().log()
    assert abs(ls.mean().item() + 1.2) < 0.15 and abs(ls.std().item() - 1.2) < 0.15   # log-normal(-1.2, 1.2)
    assert xin.std().item() == pytest.approx(1., abs=0.1)    # c_in gives the network unit-variance inputs
    assert data_sigma(x0) == pytest.approx(x0.std().item())
    with pytest.raises(ValueError, match="sig_data"): EDMCB(0.)


def test_save_load_denoiser_round_trip(tmp_path):
    torch.manual_seed(0)
    unet = EmbUNetModel(1, 1, nfs=(8, 16), num_layers=1, attn_chans=4, attn_start=1).eval()
    with torch.no_grad():   # give the BatchNorm layers non-trivial statistics
        for m in unet.modules():
            if isinstance(m, nn.BatchNorm2d): m.running_mean.uniform_(-.1, .1); m.running_var.uniform_(.5, 1.5)
    save_denoiser(unet, tmp_path / 'm.safetensors', 'edm', sig_data=0.66, note='test')
    conf = json.loads((tmp_path / 'm.json').read_text())
    assert conf['nfs'] == [8, 16] and conf['attn_start'] == 1 and conf['note'] == 'test'
    den = load_denoiser(tmp_path / 'm.safetensors')
    x, s = torch.randn(4, 1, 8, 8), torch.tensor([0.1, 1., 5., 40.])
    half = EmbUNetModel(1, 1, nfs=(8, 16), num_layers=1, attn_chans=4, attn_start=1).eval()
    half.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in unet.state_dict().items()})
    c_skip, c_out, c_in = (c.reshape(-1, 1, 1, 1) for c in scalings(s, 0.66))
    with torch.no_grad():
        expected = c_skip * x + c_out * half(c_in * x, s.log() / 4)   # D = c_skip x + c_out F(c_in x, ln(sigma)/4)
        torch.testing.assert_close(den(x, s), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="json"):
        (tmp_path / 'm.json').unlink(); load_denoiser(tmp_path / 'm.safetensors')


def test_shipped_model_denoises():
    den = load_denoiser()
    assert FMNIST_DIFFUSION.is_file() and den.config['parameterisation'] == 'edm'
    assert den.config['fid']['dpmpp2m10']['fid'] < 5
    from miniai.fid import fmnist_32
    from miniai.datasets import read_fmnist_split, SAMPLE_FMNIST
    x0 = fmnist_32(torch.from_numpy(read_fmnist_split(SAMPLE_FMNIST, 'test')[0][:16].copy()))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for sigma in (0.05, 0.5, 2.):
            noisy = x0 + sigma * torch.randn(x0.shape, generator=g)
            err_in, err_out = (noisy - x0).pow(2).mean().item(), (den(noisy, sigma) - x0).pow(2).mean().item()
            assert err_out < 0.6 * err_in, (sigma, err_in, err_out)   # it removes most of the noise
        sig = sigmas_karras(4, den.sigma_min, den.sigma_max)
        s = sample_dpmpp_2m(den, torch.randn(4, 1, 32, 32, generator=g) * sig[0], sig)
    assert s.shape == (4, 1, 32, 32) and torch.isfinite(s).all()


# ---------------------------------------------------------------- fast_bf16
def test_fast_bf16(monkeypatch):
    from miniai import accel
    monkeypatch.setattr(accel, '_cpu_flags', lambda: {'sse2', 'amx_bf16'})
    assert accel.fast_bf16('cpu')
    monkeypatch.setattr(accel, '_cpu_flags', lambda: {'sse2', 'avx2'})
    assert not accel.fast_bf16('cpu')
    monkeypatch.setattr(accel, '_cpu_flags', lambda: {'amx_bf16'})
    monkeypatch.setenv('MINIAI_NO_BF16', '1')
    assert not accel.fast_bf16('cpu')
    monkeypatch.delenv('MINIAI_NO_BF16')
    assert accel.fast_bf16('cuda') == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert not accel.fast_bf16('meta')
