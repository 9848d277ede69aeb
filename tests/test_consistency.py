"Tests for miniai.consistency: the boundary condition, the paper's schedules, the training pairs, distillation and sampling."
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.consistency import (cm_scalings, ConsistencyModel, ct_num_steps, ct_ema_decay, ct_sigmas, ConsistencyTraining,
                                ConsistencyDistillation, sample_consistency)
from miniai.diffusion import EmbUNetModel, scalings, sigmas_karras
from miniai.diffusion.edm import LogSigmaCond
from miniai.callback import Callback
from miniai.learner import Learner, TrainCB, MetricsCB


def small_cm(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return ConsistencyModel(LogSigmaCond(EmbUNetModel(1, 1, nfs=(8, 16), attn_chans=0))).to(dtype).eval()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_boundary_condition_exact(dtype):
    f = small_cm(dtype=dtype)
    x = torch.randn(5, 1, 8, 8, dtype=dtype)
    assert torch.equal(f(x, 0.002), x)
    assert torch.equal(f((x, torch.full((5,), 0.002, dtype=dtype))), x)
    assert not torch.allclose(f(x, 0.5), x)   # elsewhere the network matters


def test_boundary_condition_other_sigma_min():
    torch.manual_seed(1)
    f = ConsistencyModel(LogSigmaCond(EmbUNetModel(1, 1, nfs=(8, 16), attn_chans=0)), sig_data=0.66, sigma_min=0.01).double().eval()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(f(x, 0.01), x)


def test_scalings_closed_form_and_edm_limit():
    sig = torch.tensor([0.002, 0.1, 1., 80.], dtype=torch.float64)
    cs, co, ci = cm_scalings(sig, 0.5, 0.002)
    torch.testing.assert_close(cs, 0.25 / ((sig - 0.002)**2 + 0.25))
    torch.testing.assert_close(co, 0.5 * (sig - 0.002) / (0.25 + sig**2).sqrt())
    assert cs[0] == 1 and co[0] == 0
    for a, b in zip(cm_scalings(sig, 0.5, 0.), scalings(sig, 0.5)): torch.testing.assert_close(a, b)   # sigma_min=0: EDM's


def test_model_matches_formula():
    f = small_cm().double()
    x, s = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0.01, 0.3, 2., 70.], dtype=torch.float64)
    cs, co, ci = (c[:, None, None, None] for c in cm_scalings(s))
    torch.testing.assert_close(f(x, s), cs * x + co * f.net(x * ci, s))


def test_model_errors():
    f = small_cm()
    with pytest.raises(ValueError, match='sigma_min'): f(torch.randn(2, 1, 8, 8), 0.001)
    with pytest.raises(TypeError, match='f\\(x, sigma\\)'): f(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match='sigma_min < sigma_max'): ConsistencyModel(nn.Identity(), sigma_min=1., sigma_max=1.)
    with pytest.raises(ValueError, match='shape of x'): ConsistencyModel(lambda x, s: x[:, :1, :2])(torch.randn(2, 1, 4, 4), 1.)


def test_num_steps_is_the_papers_formula():
    s0, s1, K = 2, 150, 800
    for k in (0, 1, 7, 100, 399, 400, 799, 800):
        want = math.ceil(math.sqrt(k / K * ((s1 + 1)**2 - s0**2) + s0**2) - 1) + 1   # Song et al. 2023, Appendix C
        assert ct_num_steps(k, K, s0, s1) == want
    assert ct_num_steps(0, K) == 2 and ct_num_steps(K, K) == 151 and ct_num_steps(2 * K, K) == 151
    Ns = [ct_num_steps(k, K) for k in range(K + 1)]
    assert all(a <= b for a, b in zip(Ns, Ns[1:]))
    # the course's slip (`epoch+1 * (s1**2 - s0**2) / n_epochs`, per epoch) grows N far more slowly
    course_half = math.ceil(math.sqrt((50 + 1 * (s1**2 - s0**2) / 100) + s0**2) - 1) + 1
    assert course_half < ct_num_steps(K // 2, K) / 5
    with pytest.raises(ValueError, match='s0 <= s1'): ct_num_steps(0, 10, 5, 3)
    with pytest.raises(ValueError, match='total_steps'): ct_num_steps(0, 0)
    with pytest.raises(ValueError, match='non-negative'): ct_num_steps(-1, 10)


def test_ema_decay_schedule():
    assert ct_ema_decay(2, 2, 0.9) == pytest.approx(0.9)               # mu(0) = mu0 when N(0) = s0
    assert ct_ema_decay(151, 2, 0.9) == pytest.approx(math.exp(2 * math.log(0.9) / 151))
    assert ct_ema_decay(10, 2, 0.) == 0.
    with pytest.raises(ValueError, match='mu0'): ct_ema_decay(10, 2, 1.)


def test_ct_sigmas():
    s = ct_sigmas(18)
    assert s.dtype == torch.float64 and len(s) == 18 and s[0] == 0.002 and s[-1] == 80.
    torch.testing.assert_close(s, sigmas_karras(18, 0.002, 80., dtype=torch.float64)[:-1].flip(0))
    # Song et al.'s t_i = (eps^(1/rho) + (i-1)/(N-1) (T^(1/rho) - eps^(1/rho)))^rho
    i = torch.arange(1, 19, dtype=torch.float64)
    torch.testing.assert_close(s, (0.002**(1 / 7) + (i - 1) / 17 * (80**(1 / 7) - 0.002**(1 / 7)))**7)
    with pytest.raises(ValueError, match='>= 2'): ct_sigmas(1)


def _learn(model, x0, n_train=1):
    return SimpleNamespace(model=model, batch=(x0, torch.zeros(len(x0))), n_epochs=1, dls=SimpleNamespace(train=[0] * n_train))


def test_ct_pair_replays_from_generator():
    f = small_cm()
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    ct = ConsistencyTraining(total_steps=50, s0=4, s1=20, generator=torch.Generator().manual_seed(5))
    ct.n = 20   # k = 20 of 50
    learn = _learn(f, x0)
    ct.before_fit(learn); ct.before_batch(learn)
    (x_hi, t_hi), target = learn.batch
    N = ct_num_steps(20, 50, 4, 20)
    sig = ct_sigmas(N)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, N - 1, (6,), generator=g)
    z = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(t_hi, sig[idx + 1].float())
    torch.testing.assert_close(x_hi, x0 + sig[idx + 1].float()[:, None, None, None] * z)
    with torch.no_grad(): ref = ct.ema_model(x0 + sig[idx].float()[:, None, None, None] * z, sig[idx].float())
    torch.testing.assert_close(target, ref)
    assert not target.requires_grad


def test_target_network_follows_mu_schedule():
    f = small_cm().train()
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    ct = ConsistencyTraining(total_steps=4, s0=2, s1=10, mu0=0.9, generator=torch.Generator().manual_seed(0))
    learn = Learner(f, SimpleNamespace(train=[(x0, torch.zeros(8))] * 4, valid=[]), F.mse_loss, lr=1e-2,
                    opt_func=torch.optim.SGD, cbs=[ct, TrainCB()])
    before = {}
    class Snap(Callback):   # records the weights around each step
        order = ct.order - 1
        def after_backward(self, learn):
            before['target'] = [p.clone() for p in ct.ema_model.parameters()]
            before['mu'] = ct_ema_decay(ct_num_steps(ct.n, 4, 2, 10), 2, 0.9)
        def after_step(self, learn): before['online'] = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1, valid=False, cbs=Snap())
    mu = before['mu']
    assert 0.9 < mu < 1   # at k = 3 of 4, N > 2
    for e, t0, p in zip(ct.ema_model.parameters(), before['target'], before['online']):
        torch.testing.assert_close(e, mu * t0 + (1 - mu) * p)
    assert ct.n == 4 and ct.state_dict()['n'] == 4


def test_ct_default_total_steps_and_training_runs():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    dls = SimpleNamespace(train=[(x[i:i + 16], torch.zeros(16)) for i in range(0, 64, 16)], valid=[(x[:16], torch.zeros(16))])
    f = small_cm().train()
    ct = ConsistencyTraining(generator=torch.Generator().manual_seed(1))
    learn = Learner(f, dls, F.mse_loss, lr=1e-3, opt_func=torch.optim.Adam, cbs=[ct, TrainCB(), MetricsCB()])
    learn.fit(2)
    assert ct.K == 8 and ct.n == 8 and ct.num_steps() == 151
    assert all(math.isfinite(float(r['loss'])) for r in learn.history)
    with pytest.raises(ValueError, match='total_steps'): ConsistencyTraining(total_steps=0)


def test_cd_heun_step_exact_on_a_single_image():
    "For data = one image c the ideal denoiser is D = c and trajectories are c + sigma z: Heun lands on CT's point."
    f = small_cm()
    c = torch.rand(1, 1, 8, 8) * 2 - 1
    x0 = c.expand(6, -1, -1, -1)
    cd = ConsistencyDistillation(lambda x, s: c.expand_as(x), n=12, generator=torch.Generator().manual_seed(2))
    ct = ConsistencyTraining(total_steps=10, s0=12, s1=12, mu0=0.95, generator=torch.Generator().manual_seed(2))
    pairs = []
    for cb in (cd, ct):
        learn = _learn(f, x0)
        cb.before_fit(learn); cb.before_batch(learn)
        pairs.append(learn.batch)
    torch.testing.assert_close(pairs[0][0][0], pairs[1][0][0])
    torch.testing.assert_close(pairs[0][1], pairs[1][1])
    assert cd.num_steps() == 12 and cd.current_decay() == 0.95


def test_cd_heun_step_against_hand_computation():
    teacher = lambda x, s: 0.5 * x   # a linear denoiser: dx/ds = (x - x/2)/s = x/(2s)
    cd = ConsistencyDistillation(teacher, n=5)
    x_hi = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t_hi, t_lo = torch.tensor([3., 1., 0.5], dtype=torch.float64), torch.tensor([1., 0.5, 0.1], dtype=torch.float64)
    got = cd.lower_point(x_hi, x_hi, t_hi, t_lo, None)
    th, tl = t_hi[:, None, None, None], t_lo[:, None, None, None]
    d = x_hi / (2 * th)
    xe = x_hi + (tl - th) * d
    torch.testing.assert_close(got, x_hi + (tl - th) * (d + xe / (2 * tl)) / 2)
    with pytest.raises(TypeError, match='denoiser'): ConsistencyDistillation(None)


def test_sampling_adds_the_right_noise():
    calls = []
    def model(x, s):
        calls.append((x.clone(), s))
        return torch.full_like(x, 0.25)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64) * 80
    out = sample_consistency(model, x, [80., 5., 1.], sigma_min=0.002, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    z1, z2 = (torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    assert [s for _, s in calls] == [80., 5., 1.]
    torch.testing.assert_close(calls[0][0], x)
    torch.testing.assert_close(calls[1][0], 0.25 + math.sqrt(25 - 0.002**2) * z1)
    torch.testing.assert_close(calls[2][0], 0.25 + math.sqrt(1 - 0.002**2) * z2)
    assert torch.equal(out, torch.full_like(x, 0.25))


def test_sampling_one_step_is_one_call_and_uses_model_sigma_min():
    f = small_cm()
    x = torch.randn(3, 1, 8, 8) * 80
    with torch.no_grad(): torch.testing.assert_close(sample_consistency(f, x, [80.]), f(x, 80.))
    with pytest.raises(ValueError, match='decreasing'): sample_consistency(f, x, [1., 2.])
    with pytest.raises(ValueError, match='sigma_min'): sample_consistency(f, x, [80., 0.001])


def test_pseudo_huber():
    from miniai.consistency import pseudo_huber
    a, b = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    c = 0.00054 * 8
    want = (((a - b)**2).sum((1, 2, 3)) + c**2).sqrt().sub(c).mean()
    torch.testing.assert_close(pseudo_huber(a, b).double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pseudo_huber(a, b, c=0.).double(), (a - b).flatten(1).norm(dim=1).mean(), rtol=1e-6, atol=1e-6)
    assert float(pseudo_huber(a, a)) == 0.
    with pytest.raises(ValueError, match='shape'): pseudo_huber(a, b[:2])


def test_target_runs_in_the_models_mode():
    "With mu0=0 the target is the model itself without gradient, BatchNorm on batch statistics while training."
    f = small_cm().train()
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    ct = ConsistencyTraining(total_steps=10, s0=5, s1=5, mu0=0., generator=torch.Generator().manual_seed(3))
    learn = _learn(f, x0)
    ct.before_fit(learn); ct.before_batch(learn)
    (x_hi, t_hi), target = learn.batch
    g = torch.Generator().manual_seed(3)
    sig = ct_sigmas(5)
    idx = torch.randint(0, 4, (6,), generator=g)
    z = torch.randn(x0.shape, generator=g)
    with torch.no_grad(): want = f(x0 + sig[idx].float()[:, None, None, None] * z, sig[idx].float())   # train mode
    torch.testing.assert_close(target, want)
    assert not ct.ema_model.training   # back in eval mode afterwards


def test_level_probs_are_lognormal_mass_between_levels():
    "Song & Dhariwal 2023: P(pair n) ∝ Φ((ln t_{n+1} - P_mean)/P_std) - Φ((ln t_n - P_mean)/P_std), against math.erf."
    from miniai.consistency import ct_level_probs
    for n, pm, ps in [(5, -1.1, 2.), (40, 0.3, 1.2), (151, -1.1, 2.)]:
        sig = ct_sigmas(n)
        phi = lambda s: 0.5 * (1 + math.erf((math.log(s) - pm) / (ps * math.sqrt(2))))
        want = torch.tensor([phi(b) - phi(a) for a, b in zip(sig[:-1].tolist(), sig[1:].tolist())], dtype=torch.float64)
        got = ct_level_probs(sig, pm, ps)
        assert got.shape == (n - 1,)
        torch.testing.assert_close(got, want / want.sum())


def test_lognormal_levels_and_inv_gap_weights_replay_from_generator():
    from miniai.consistency import ct_level_probs
    f = small_cm()
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    ct = ConsistencyTraining(total_steps=50, s0=10, s1=40, mu0=0., levels='lognormal', weighting='inv_gap',
                             generator=torch.Generator().manual_seed(7))
    ct.n = 30
    learn = _learn(f, x0)
    ct.before_fit(learn); ct.before_batch(learn)
    (x_hi, t_hi), target, lam = learn.batch
    N = ct_num_steps(30, 50, 10, 40)
    sig = ct_sigmas(N)
    g = torch.Generator().manual_seed(7)
    idx = torch.multinomial(ct_level_probs(sig), 64, replacement=True, generator=g)
    z = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(t_hi, sig[idx + 1].float())
    torch.testing.assert_close(x_hi, x0 + sig[idx + 1].float()[:, None, None, None] * z)
    torch.testing.assert_close(lam, (1 / (sig[idx + 1] - sig[idx])).float())
    assert t_hi.max() < 80.   # the top pair carries almost no log-normal mass: 64 draws never reach it
    # the uniform default draws differently and adds no weight
    ct_u = ConsistencyTraining(total_steps=50, s0=10, s1=40, mu0=0., generator=torch.Generator().manual_seed(7))
    ct_u.n = 30; learn = _learn(f, x0); ct_u.before_fit(learn); ct_u.before_batch(learn)
    assert len(learn.batch) == 2 and not torch.equal(learn.batch[0][1], t_hi)
    with pytest.raises(ValueError, match='levels'): ConsistencyTraining(levels='cosine')
    with pytest.raises(ValueError, match='weighting'): ConsistencyTraining(weighting='snr')


def test_weighted_pseudo_huber_and_training_with_weights():
    from miniai.consistency import pseudo_huber
    a, b = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    w = torch.rand(5, dtype=torch.float64) * 10
    c = 0.00054 * 8
    per = (((a - b)**2).sum((1, 2, 3)) + c**2).sqrt() - c
    torch.testing.assert_close(pseudo_huber(a, b, w).double(), (per * w).mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pseudo_huber(a, b, torch.ones(5)), pseudo_huber(a, b))
    with pytest.raises(ValueError, match='one value per item'): pseudo_huber(a, b, w[:3])
    # a fit with the weighted batch: the weight reaches the loss through the Learner's standard step
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8) * 2 - 1
    dls = SimpleNamespace(train=[(x[i:i + 16], torch.zeros(16)) for i in range(0, 32, 16)], valid=[])
    seen = []
    def loss(p, t, lam): seen.append(lam.clone()); return pseudo_huber(p, t, lam)
    ct = ConsistencyTraining(mu0=0., levels='lognormal', weighting='inv_gap', generator=torch.Generator().manual_seed(1))
    Learner(small_cm().train(), dls, loss, lr=1e-3, opt_func=torch.optim.Adam, cbs=[ct, TrainCB()]).fit(1, valid=False)
    assert len(seen) == 2 and all(s.shape == (16,) and (s > 0).all() for s in seen)
