"""DDPM/DDIM schedules and samplers of `miniai.diffusion` against diffusers' schedulers (float64, fresh random inputs)."""
import math
import pytest, torch
from miniai.diffusion.ddpm import linear_sched, noisify, collate_ddpm, dl_ddpm, ddpm_sample
from miniai.diffusion.ddim import ddim_sample, abar, inv_abar, ddim_step, sample, cond_sample

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, DDIMScheduler


def stand_in(seed):
    "A non-linear ε-model depending on x and t, with fixed random weights."
    w = torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda x, t: torch.tanh(w[0] * x + w[1]) * 0.8 + w[2] * torch.sin(x * (1 + t.to(x).reshape(-1, *[1] * (x.ndim - 1)) / 500))

def f64_sched(sch, ours):
    "Give a diffusers scheduler float64 tables (from our betas; the cumulative product recomputed here) so both run in float64."
    sch.betas = ours.beta.clone()
    sch.alphas = 1 - sch.betas
    sch.alphas_cumprod = torch.cumprod(sch.alphas, 0)
    return sch

@pytest.mark.parametrize("b0,b1,n", [(1e-4, 0.02, 1000), (5e-4, 0.03, 200)])
def test_linear_sched_matches_diffusers(b0, b1, n):
    ours = linear_sched(b0, b1, n)
    ref = DDPMScheduler(num_train_timesteps=n, beta_start=b0, beta_end=b1, beta_schedule="linear")
    # diffusers keeps float32 tables; its float32 cumulative product of 1000 terms is good to ~1e-6 relative
    torch.testing.assert_close(ours.abar.float(), ref.alphas_cumprod, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(ours.beta.float(), ref.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alpha, 1 - ours.beta)
    torch.testing.assert_close(ours.sigma, ours.beta.sqrt())
    assert ours.abar.dtype == torch.float64

def test_ddpm_sample_matches_diffusers():
    torch.manual_seed(1)
    ours = linear_sched(1e-4, 0.02, 1000)
    model = stand_in(0)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    got = ddpm_sample(model, x.clone(), ours, generator=torch.Generator().manual_seed(7))
    sch = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        variance_type="fixed_small", clip_sample=False)
    sch.set_timesteps(1000)
    sch = f64_sched(sch, ours)
    g, xr = torch.Generator().manual_seed(7), x.clone()
    for t in sch.timesteps:
        xr = sch.step(model(xr, torch.full((3,), int(t))), int(t), xr, generator=g).prev_sample
    torch.testing.assert_close(got, xr, rtol=1e-10, atol=1e-10)
    # and it depends on the noise
    other = ddpm_sample(model, x.clone(), ours, generator=torch.Generator().manual_seed(8))
    assert (other - got).abs().max() > 1e-3

@pytest.mark.parametrize("n_inf,eta", [(50, 0.), (20, 0.), (25, 0.5), (10, 1.)])
def test_ddim_sample_matches_diffusers(n_inf, eta):
    torch.manual_seed(n_inf)
    ours = linear_sched()
    model = stand_in(n_inf)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    sch = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        clip_sample=False, set_alpha_to_one=True)
    sch.set_timesteps(n_inf)
    sch = f64_sched(sch, ours)
    sch.final_alpha_cumprod = torch.tensor(1., dtype=torch.float64)
    ts = [int(t) for t in sch.timesteps]
    got = ddim_sample(model, x.clone(), ours, ts, eta=eta, generator=torch.Generator().manual_seed(3))
    g, xr = torch.Generator().manual_seed(3), x.clone()
    for t in ts:
        noise = torch.randn(xr.shape, generator=g, dtype=xr.dtype) if eta > 0 else None
        xr = sch.step(model(xr, torch.full((2,), t)), t, xr, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(got, xr, rtol=1e-10, atol=1e-10)

def exact_eps(sched, s):
    "The exact ε-predictor for data N(0, s^2) on a discrete schedule."
    def f(x, t):
        ab = sched.abar.to(x)[t].reshape(-1, 1)
        return (1 - ab).sqrt() * x / (ab * s**2 + 1 - ab)
    return f

def test_gaussian_variance_ddpm_and_ddim():
    # N(0, s^2) data and the exact ε: DDPM (1000 steps) has ~1.3% bias from its fixed posterior variance; 8,000 samples give
    # ~1.6% standard error on a variance: tolerance 7%. DDIM (eta=0) is a deterministic linear map, so its ratio is exact up
    # to discretisation: < 1% at 1000 steps.
    s, sched = 0.7, linear_sched()
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**30, ())))
    aT = sched.abar[-1]
    z = torch.randn(8000, 1, generator=g, dtype=torch.float64)
    out = ddpm_sample(exact_eps(sched, s), z * (aT * s**2 + 1 - aT).sqrt(), sched, generator=g)
    assert abs(out.var().item() / s**2 - 1) < 0.07
    out = ddim_sample(exact_eps(sched, s), z * (aT * s**2 + 1 - aT).sqrt(), sched, list(range(999, -1, -1)))
    assert abs((out.var() / z.var()).item() / s**2 - 1) < 0.01

def test_noisify_statistics_and_generator():
    sched = linear_sched()
    x0 = torch.randn(4000, 1, 2, 2, dtype=torch.float64)
    (xt, t), eps = noisify(x0, sched.abar, generator=torch.Generator().manual_seed(0))
    ab = sched.abar[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 1000 and len(t.unique()) > 900
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1) < 0.05
    (xt2, t2), _ = noisify(x0, sched.abar, generator=torch.Generator().manual_seed(0))
    assert torch.equal(xt, xt2) and torch.equal(t, t2)
    (xt3, t3), eps3 = noisify(x0.float(), abar, generator=torch.Generator().manual_seed(0))   # continuous cosine schedule
    assert t3.is_floating_point() and 0 <= t3.min() and t3.max() <= 0.999 and xt3.dtype == torch.float32
    a3 = abar(t3).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt3, a3.sqrt() * x0.float() + (1 - a3).sqrt() * eps3)

def test_collate_and_dl():
    sched = linear_sched(n_steps=10)
    ds = [{'image': torch.randn(1, 4, 4), 'label': i} for i in range(10)]
    (xt, t), eps = collate_ddpm(ds[:3], sched.abar, 'image')
    assert xt.shape == (3, 1, 4, 4) and t.shape == (3,) and eps.shape == xt.shape
    batches = list(dl_ddpm(ds, sched.abar, 4))
    assert [len(b[1]) for b in batches] == [4, 4, 2]

def test_cosine_schedule():
    t = torch.rand(100, dtype=torch.float64)
    torch.testing.assert_close(abar(t), torch.cos(t * math.pi / 2)**2)
    torch.testing.assert_close(inv_abar(abar(t)), t)

def test_continuous_sample_is_ddim():
    # `sample(ddim_step, ...)` with eta=0 equals the DDIM update written out on the cosine schedule
    model = stand_in(5)
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    got = sample(ddim_step, model, x, 5, eta=0.)
    ts = torch.linspace(1 - 1 / 5, 0, 5, dtype=torch.float64)
    xr = x.clone()
    for i, t in enumerate(ts):
        a_t = abar(t); a_n = abar(ts[i + 1]) if i < 4 else torch.tensor(1., dtype=torch.float64)
        e = model(xr, t.expand(2))
        x0 = (xr - (1 - a_t).sqrt() * e) / a_t.sqrt()
        xr = a_n.sqrt() * x0 + (1 - a_n).sqrt() * e
    torch.testing.assert_close(got, xr)
    seen = []
    cond_sample(4, ddim_step, lambda x, t, c: seen.append(c) or model(x, t), x, 3, eta=1., generator=torch.Generator())
    assert len(seen) == 3 and all(c.tolist() == [4, 4] for c in seen)

def test_bad_inputs():
    sched, model, x = linear_sched(n_steps=50), stand_in(0), torch.randn(2, 1, 2, 2)
    calls = []
    counting = lambda x, t: calls.append(1) or model(x, t)
    with pytest.raises(ValueError, match="strictly descending"): ddim_sample(counting, x, sched, [0, 10])
    with pytest.raises(ValueError, match="must lie in"): ddim_sample(counting, x, sched, [50, 10])
    with pytest.raises(ValueError, match="must lie in"): ddim_sample(counting, x, sched, [10, -1])
    with pytest.raises(ValueError, match="eta"): ddim_sample(counting, x, sched, [10, 1], eta=-1.)
    with pytest.raises(TypeError, match="floating-point"): ddpm_sample(counting, x.long(), sched)
    with pytest.raises(ValueError, match="abar"): ddpm_sample(counting, x, torch.tensor([0.5, 0.9]))
    assert not calls
    with pytest.raises(ValueError, match="shape"): ddpm_sample(lambda x, t: x[:1], x, sched)
    with pytest.raises(ValueError, match="shape"): ddim_sample(lambda x, t: x.sum(1), x, sched, [20, 10])
    with pytest.raises(ValueError, match="n_steps"): linear_sched(n_steps=0)
    with pytest.raises(ValueError, match="betamin"): linear_sched(0.1, 0.01)
    with pytest.raises(ValueError, match="steps"): sample(ddim_step, model, x, 0)

def test_progress_bar_changes_nothing(capsys):
    sched, model = linear_sched(n_steps=30), stand_in(2)
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    a = ddpm_sample(model, x, sched, generator=torch.Generator().manual_seed(0), progress=True)
    b = ddpm_sample(model, x, sched, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    (xt, t), _ = noisify(x, sched, generator=torch.Generator().manual_seed(0))   # a schedule object is accepted as abar
    (xt2, t2), _ = noisify(x, sched.abar, generator=torch.Generator().manual_seed(0))
    assert torch.equal(xt, xt2)
