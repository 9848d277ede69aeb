"""The precision rule of `miniai.diffusion`: with `x` in bfloat16 or float16, schedules, sampler arithmetic and state run in
float32; the model is called with x's dtype; the result has x's dtype.

Two kinds of check, each against a float32 run:
- exact: a half-precision model (half in, half out, float32 inside) sampled from a half `x` gives exactly the float32 run of
  the same model seen from float32 (its input rounded to half on the way in, its half output read as float32), rounded to
  x's dtype once at the end. Equality holds only if everything between the model calls runs in float32.
- close: with an exact denoiser for Gaussian data (a contracting flow), the half run is within half-precision rounding of
  the float32 run of the float32 model.
Before the rule, DDPM/DDIM returned NaN (abar of the first steps rounds to 1 in half precision) and the Karras samplers,
`EpsDenoiser`, `denoise`, `noisify` and `noisify_karras` computed in half precision."""
import pytest, torch
from miniai.diffusion import (linear_sched, cosine_sched, noisify, ddpm_sample, ddim_sample, ddim_step, sample, abar,
    sigmas_karras, EpsDenoiser, KarrasDenoiser, denoise, noisify_karras, cfg_denoiser,
    sample_euler, sample_euler_ancestral, sample_heun, sample_lms, sample_dpmpp_2m)

HALF = [torch.bfloat16, torch.float16]

def g(seed): return torch.Generator().manual_seed(seed)

def eps_model(x, t):
    "A fixed non-linear ε-model of x and t (integer steps or continuous times)."
    tt = t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return torch.tanh(0.9 * x + 0.1) * 0.8 + 0.3 * torch.sin(x * (1 + tt / 500))

def x0_model(x, s):
    "A fixed non-linear denoiser (x, sigma) -> x0_hat."
    s = s.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return (torch.tanh(x * 0.7) * 0.7 + x) / (1 + s**2) + 0.3 * torch.sin(x + 0.5) * s / (1 + s**2)

def half(f, dt):
    "`f` as a half-precision model: it takes and returns dtype `dt` and computes in float32 inside."
    return lambda x, t, *args, **kw: f(x.float(), t, *args, **kw).to(dt)

def seen32(f, dt):
    "The half-precision model `half(f, dt)` seen from float32: the input rounded to `dt`, the output read as float32."
    hf = half(f, dt)
    return lambda x, t, *args, **kw: hf(x.to(dt), t, *args, **kw).float()

def same(got, ref, dt):
    "`got` has dtype `dt`, is finite and equals the float32 result `ref` rounded to `dt`."
    assert got.dtype == dt, got.dtype
    assert torch.isfinite(got.float()).all()
    torch.testing.assert_close(got, ref.to(dt), rtol=0, atol=0)

# ---- exact: the arithmetic between model calls is float32 ----

@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("sched", [linear_sched(), cosine_sched(200)], ids=["linear", "cosine"])
def test_ddpm_sample_exact(dt, sched):
    x = torch.randn(3, 1, 4, 4, generator=g(0)).to(dt)
    same(ddpm_sample(half(eps_model, dt), x, sched, generator=g(1)), ddpm_sample(seen32(eps_model, dt), x.float(), sched, generator=g(1)), dt)

@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("eta", [0., 0.6])
def test_ddim_sample_exact(dt, eta):
    ts = list(range(999, 0, -50)) + [1, 0]   # ends at the steps whose abar rounds to 1 in half precision
    x = torch.randn(3, 1, 4, 4, generator=g(2)).to(dt)
    same(ddim_sample(half(eps_model, dt), x, linear_sched(), ts, eta=eta, generator=g(3)),
         ddim_sample(seen32(eps_model, dt), x.float(), linear_sched(), ts, eta=eta, generator=g(3)), dt)

@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("eta", [0., 1.])
def test_continuous_sample_exact(dt, eta):
    x = torch.randn(3, 1, 4, 4, generator=g(4)).to(dt)
    same(sample(ddim_step, half(eps_model, dt), x, 20, eta=eta, generator=g(5)),
         sample(ddim_step, seen32(eps_model, dt), x.float(), 20, eta=eta, generator=g(5)), dt)
    a, a1 = abar(torch.tensor(0.3)), abar(torch.tensor(0.25))
    e = eps_model(x.float(), torch.full((3,), 0.3)).to(dt)
    same(ddim_step(x, 0.3, e, a, a1, 1 - a, 1 - a1, 1., generator=g(6)),
         ddim_step(x.float(), 0.3, e.float(), a, a1, 1 - a, 1 - a1, 1., generator=g(6)), dt)

@pytest.mark.parametrize("dt", HALF)
def test_noisify_exact(dt):
    x0 = torch.randn(2000, 1, 2, 2, generator=g(7)).to(dt)
    for sched in (linear_sched(), abar):
        (xt, t), eps = noisify(x0.float(), sched, generator=g(8))
        (xh, th), eh = noisify(x0, sched, generator=g(8))
        assert torch.equal(t, th) and t.dtype == th.dtype   # continuous t is drawn in float32 too
        same(xh, xt, dt); same(eh, eps, dt)

@pytest.mark.parametrize("dt", HALF)
def test_noisify_karras_exact(dt):
    x0 = (torch.randn(500, 1, 2, 2, generator=g(9)) * 0.5).to(dt)
    (xin, s), target = noisify_karras(x0.float(), generator=g(10))
    (xh, sh), th = noisify_karras(x0, generator=g(10))
    assert sh.dtype == torch.float32 and torch.equal(sh, s)
    same(xh, xin, dt); same(th, target, dt)

@pytest.mark.parametrize("dt", HALF)
def test_denoisers_exact(dt):
    sig = torch.tensor([157., 80., 10., 1., 0.1, 0.02])
    x = (torch.randn(6, 1, 3, 3, generator=g(11)) * sig.reshape(-1, 1, 1, 1)).to(dt)
    same(KarrasDenoiser(half(x0_model, dt))(x, sig), KarrasDenoiser(seen32(x0_model, dt))(x.float(), sig), dt)
    same(denoise(half(x0_model, dt), x, sig), denoise(seen32(x0_model, dt), x.float(), sig), dt)
    seen = []
    spy = lambda x, t: seen.append(t) or eps_model(x, t)
    den = EpsDenoiser(half(spy, dt), linear_sched())
    same(den(x, sig), EpsDenoiser(seen32(spy, dt), linear_sched())(x.float(), sig), dt)
    # the model's t comes from sigma in float32, not from a half-precision sigma (t=999 would be 1000 in bfloat16)
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], seen[1]) and torch.equal(seen[0], den.sigma_to_t(sig))
    model = lambda x, t, c: eps_model(x, t) + 0.1 * c.to(x).reshape(-1, 1, 1, 1)
    t = torch.tensor([10, 500, 900, 999, 3, 0])
    same(cfg_denoiser(half(model, dt), torch.tensor([0, 1, 2, 0, 1, 2]), 3, scale=4.)(x, t),
         cfg_denoiser(seen32(model, dt), torch.tensor([0, 1, 2, 0, 1, 2]), 3, scale=4.)(x.float(), t), dt)

SAMPLERS = [(sample_euler, {}), (sample_euler, dict(s_churn=10.)), (sample_euler_ancestral, {}), (sample_heun, {}),
            (sample_heun, dict(s_churn=10., s_tmin=0.1, s_tmax=10.)), (sample_lms, {}), (sample_dpmpp_2m, {})]
IDS = ['euler', 'euler_churn', 'euler_ancestral', 'heun', 'heun_churn', 'lms', 'dpmpp_2m']

def rng(f, kw, seed):
    "The generator keyword for the samplers that draw noise."
    return dict(generator=g(seed)) if f is sample_euler_ancestral or kw.get('s_churn') else {}

@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("f,kw", SAMPLERS, ids=IDS)
def test_karras_samplers_exact(dt, f, kw):
    sig = sigmas_karras(15, 0.02, 80.)
    x = (torch.randn(4, 1, 4, 4, generator=g(12)) * sig[0]).to(dt)
    same(f(half(x0_model, dt), x, sig, **kw, **rng(f, kw, 13)), f(seen32(x0_model, dt), x.float(), sig, **kw, **rng(f, kw, 13)), dt)

# ---- close: end to end, a half run stays near the float32 run ----

S = 0.5   # data N(0, S^2): the exact denoisers below make every sampler a contracting, well-conditioned map

def gauss_eps(sched):
    "The exact ε-predictor for N(0, S^2) data on a discrete schedule, for integer or fractional steps t."
    den = EpsDenoiser(None, sched)
    def f(x, t):
        ab = 1 / (1 + den.t_to_sigma(t).to(x).reshape(-1, *[1] * (x.ndim - 1))**2)
        return (1 - ab).sqrt() * x / (ab * S**2 + 1 - ab)
    return f

def gauss_x0(x, s):
    "The exact denoiser for N(0, S^2) data."
    return x * S**2 / (S**2 + s.to(x).reshape(-1, *[1] * (x.ndim - 1))**2)

# bf16 keeps 8 significant bits (relative rounding 2^-9), fp16 11 (2^-12); the samples are O(S)
TOL = {torch.bfloat16: dict(atol=0.02, rtol=0.02), torch.float16: dict(atol=0.003, rtol=0.003)}

def close(got, ref, dt):
    assert got.dtype == dt and torch.isfinite(got.float()).all()
    torch.testing.assert_close(got.float(), ref, **TOL[dt])

@pytest.mark.parametrize("dt", HALF)
def test_ddpm_ddim_close(dt):
    sched = linear_sched()
    aT = sched.abar[-1].item()
    x = torch.randn(64, 1, 2, 2, generator=g(14)) * (aT * S**2 + 1 - aT) ** 0.5
    m = gauss_eps(sched)
    close(ddpm_sample(half(m, dt), x.to(dt), sched, generator=g(15)), ddpm_sample(m, x, sched, generator=g(15)), dt)
    ts = list(range(999, -1, -40))
    for eta in (0., 1.):
        close(ddim_sample(half(m, dt), x.to(dt), sched, ts, eta=eta, generator=g(16)), ddim_sample(m, x, sched, ts, eta=eta, generator=g(16)), dt)

@pytest.mark.parametrize("dt", HALF)
@pytest.mark.parametrize("f,kw", SAMPLERS, ids=IDS)
def test_karras_samplers_close(dt, f, kw):
    sig = sigmas_karras(20, 0.002, 80.)
    x = torch.randn(64, 1, 2, 2, generator=g(17)) * (S**2 + 80.**2) ** 0.5
    close(f(half(gauss_x0, dt), x.to(dt), sig, **kw, **rng(f, kw, 18)), f(gauss_x0, x, sig, **kw, **rng(f, kw, 18)), dt)
    sched = linear_sched()
    den, den_h = EpsDenoiser(gauss_eps(sched), sched), EpsDenoiser(half(gauss_eps(sched), dt), sched)
    sig = sigmas_karras(20, float(den.sigma_min), float(den.sigma_max))
    x = torch.randn(64, 1, 2, 2, generator=g(19)) * (S**2 + sig[0]**2).sqrt()
    close(f(den_h, x.to(dt), sig, **kw, **rng(f, kw, 20)), f(den, x, sig, **kw, **rng(f, kw, 20)), dt)
