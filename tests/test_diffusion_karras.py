"""Karras schedule, preconditioning and samplers of `miniai.diffusion` against k-diffusion (float64, fresh random inputs)."""
import pytest, torch
from kdiff import kdiff_sampling
from miniai.diffusion.karras import (sigmas_karras, scalings, denoise, noisify_karras, KarrasDenoiser, EpsDenoiser,
    get_ancestral_step, sample_euler, sample_euler_ancestral, sample_heun, sample_lms, sample_dpmpp_2m, cfg_denoiser)
from miniai.diffusion.ddpm import linear_sched

K = kdiff_sampling()
pytestmark = pytest.mark.skipif(K is None, reason="k-diffusion is not installed")


def stand_in(seed):
    "A non-linear denoiser `(x, sigma) -> x0_hat` with fixed random weights."
    w = torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    def f(x, s):
        s = s.reshape(-1, *[1] * (x.ndim - 1))
        return torch.tanh(x * w[0]) * 0.7 / (1 + s**2) + x / (1 + s**2) + w[1] * torch.sin(x + w[2]) * s / (1 + s**2)
    return f

def setup(seed, n=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) * 20
    sig = sigmas_karras(n, 0.02, 20., dtype=torch.float64)
    return stand_in(seed), x, sig

@pytest.mark.parametrize("n,lo,hi,rho", [(10, 0.01, 80., 7.), (25, 0.002, 14.6, 5.), (1, 0.1, 1., 7.)])
def test_sigmas_karras(n, lo, hi, rho):
    torch.testing.assert_close(sigmas_karras(n, lo, hi, rho), K.get_sigmas_karras(n, lo, hi, rho), rtol=3e-6, atol=0)   # both float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try: ref = K.get_sigmas_karras(n, lo, hi, rho)
    finally: torch.set_default_dtype(old)
    torch.testing.assert_close(sigmas_karras(n, lo, hi, rho, dtype=torch.float64), ref, rtol=1e-14, atol=0)

def test_scalings_and_denoise():
    sig = torch.rand(5, dtype=torch.float64) * 10
    c_skip, c_out, c_in = scalings(sig, 0.6)
    tot = sig**2 + 0.36
    torch.testing.assert_close(c_skip, 0.36 / tot); torch.testing.assert_close(c_out, sig * 0.6 / tot.sqrt())
    torch.testing.assert_close(c_in, tot.rsqrt())
    # D(x; sigma) with the network that outputs its input: c_skip x + c_out c_in x
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(denoise(lambda xi, s: xi, x, sig, 0.6), x * (c_skip + c_out * c_in)[:, None])
    torch.testing.assert_close(KarrasDenoiser(lambda xi, s: xi, 0.6)(x, sig), x * (c_skip + c_out * c_in)[:, None])
    # the training target makes the denoiser exact
    x0 = torch.randn(200, 1, 2, 2, dtype=torch.float64) * 0.5
    (xin, s), target = noisify_karras(x0, generator=torch.Generator().manual_seed(0))
    c_skip, c_out, c_in = (c.reshape(-1, 1, 1, 1) for c in scalings(s))
    torch.testing.assert_close(c_skip * xin / c_in + c_out * target, x0)
    assert abs(s.log().mean().item() + 1.2) < 0.3 and abs(s.log().std().item() - 1.2) < 0.3

def test_eps_denoiser_matches_kdiffusion():
    ext = pytest.importorskip("k_diffusion.external")
    abar = linear_sched().abar
    eps_model = lambda x, t: torch.tanh(x) * (1 + t.to(x).reshape(-1, 1, 1, 1) / 1000)
    class Inner(torch.nn.Module):
        def forward(self, x, t): return eps_model(x, t)
    for quantize in (False, True):
        ours = EpsDenoiser(eps_model, abar, quantize=quantize)
        ref = ext.DiscreteEpsDDPMDenoiser(Inner(), abar, quantize=quantize)
        x = torch.randn(6, 1, 3, 3, dtype=torch.float64)
        sig = torch.tensor([0.005, 0.01, 0.3, 1., 50., 200.], dtype=torch.float64)
        torch.testing.assert_close(ours(x, sig), ref(x, sig), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.sigma_to_t(sig).double(), ref.sigma_to_t(sig).double())
        # k-diffusion interpolates the steps of get_sigmas in float32
        torch.testing.assert_close(ours.get_sigmas(30), ref.get_sigmas(30), rtol=1e-6, atol=0)
        torch.testing.assert_close(ours.get_sigmas(), ref.get_sigmas(), rtol=1e-6, atol=0)

@pytest.mark.parametrize("eta", [1., 0.5, 0.])
def test_get_ancestral_step(eta):
    a, b = torch.tensor(3., dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    for o, r in zip(get_ancestral_step(a, b, eta), K.get_ancestral_step(a, b, eta)):
        torch.testing.assert_close(torch.as_tensor(o, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64))

TOL = dict(rtol=1e-10, atol=1e-10)

@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_lms", "sample_dpmpp_2m"])
def test_deterministic_samplers_match_kdiffusion(name):
    seed = int(torch.randint(0, 2**30, ()))
    model, x, sig = setup(seed)
    steps = []
    got = globals()[name](model, x.clone(), sig, callback=lambda d: steps.append(d['i']))
    ref = getattr(K, name)(model, x.clone(), sig, disable=True)
    torch.testing.assert_close(got, ref, **TOL)
    assert steps == list(range(len(sig) - 1))

@pytest.mark.parametrize("order", [1, 2, 3])
def test_lms_orders(order):
    model, x, sig = setup(11, n=8)
    torch.testing.assert_close(sample_lms(model, x.clone(), sig, order=order), K.sample_lms(model, x.clone(), sig, disable=True, order=order), **TOL)

@pytest.mark.parametrize("eta,s_noise", [(1., 1.), (0.5, 0.8)])
def test_euler_ancestral_matches_kdiffusion(eta, s_noise):
    model, x, sig = setup(3)
    noise = torch.randn(len(sig), *x.shape, dtype=torch.float64)
    def ns(sigma, sigma_next):   # noise keyed by the step it is drawn at
        return noise[int((sig == sigma).nonzero()[0])]
    got = sample_euler_ancestral(model, x.clone(), sig, noise_sampler=ns, eta=eta, s_noise=s_noise)
    ref = K.sample_euler_ancestral(model, x.clone(), sig, disable=True, noise_sampler=ns, eta=eta, s_noise=s_noise)
    torch.testing.assert_close(got, ref, **TOL)
    # the default noise comes from `generator`: same seed, same result; another seed, another one
    a = sample_euler_ancestral(model, x.clone(), sig, generator=torch.Generator().manual_seed(0))
    b = sample_euler_ancestral(model, x.clone(), sig, generator=torch.Generator().manual_seed(0))
    c = sample_euler_ancestral(model, x.clone(), sig, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3

@pytest.mark.parametrize("name", ["sample_euler", "sample_heun"])
@pytest.mark.parametrize("churn", [dict(s_churn=5.), dict(s_churn=40., s_tmin=0.1, s_tmax=5., s_noise=1.003)])
def test_churn_matches_kdiffusion(name, churn, monkeypatch):
    model, x, sig = setup(5)
    noise = torch.randn(len(sig), *x.shape, dtype=torch.float64)
    got = globals()[name](model, x.clone(), sig, noise_sampler=lambda s, s_hat: noise[int((sig == s).nonzero()[0])], **churn)
    # k-diffusion draws its churn noise with torch.randn_like at every step, in order: feed it the same tensors
    it = iter(noise)
    monkeypatch.setattr(torch, "randn_like", lambda t, **kw: next(it).clone())
    ref = getattr(K, name)(model, x.clone(), sig, disable=True, **churn)
    monkeypatch.undo()
    torch.testing.assert_close(got, ref, **TOL)
    no_churn = globals()[name](model, x.clone(), sig)
    assert (no_churn - got).abs().max() > 1e-3   # the churn did something

@pytest.mark.parametrize("f,n,tol", [(sample_euler, 400, 0.02), (sample_heun, 100, 0.01), (sample_lms, 100, 0.01), (sample_dpmpp_2m, 100, 0.01)])
def test_gaussian_variance(f, n, tol):
    # data N(0, s^2): the exact denoiser is x s^2/(s^2+sigma^2) and the ODE maps N(0, s^2+sigma_max^2) exactly onto N(0, s^2).
    # The denoiser is linear, so out/x is one constant: the variance ratio has no sampling noise, only solver error
    # (measured: Euler 1.4% at 400 steps, the second-order solvers 0.03-0.3% at 100).
    s = 0.5
    exact = lambda x, sig: x * s**2 / (s**2 + sig.reshape(-1, 1)**2)
    sig = sigmas_karras(n, 0.002, 80., dtype=torch.float64)
    x = torch.randn(2000, 1, dtype=torch.float64)
    out = f(exact, x * (s**2 + sig[0]**2).sqrt(), sig)
    assert abs((out.var() / x.var()).item() / s**2 - 1) < tol

def test_gaussian_variance_ancestral():
    # stochastic: 20,000 samples give ~1% standard error on the variance; 500 steps leave ~2% bias: tolerance 7%
    s = 0.5
    exact = lambda x, sig: x * s**2 / (s**2 + sig.reshape(-1, 1)**2)
    sig = sigmas_karras(500, 0.002, 80., dtype=torch.float64)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**30, ())))
    x = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    out = sample_euler_ancestral(exact, x * (s**2 + sig[0]**2).sqrt(), sig, generator=g)
    assert abs(out.var().item() / s**2 - 1) < 0.07

def test_cfg_denoiser():
    model = lambda x, t, c: x * t.reshape(-1, 1) + c.to(x).reshape(-1, 1)
    x, t = torch.randn(3, 2, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    cond = torch.tensor([0, 1, 2])
    for scale in (0., 1., 4.5):
        got = cfg_denoiser(model, cond, 10, scale)(x, t)
        u, c = model(x, t, torch.full((3,), 10)), model(x, t, cond)
        torch.testing.assert_close(got, u + scale * (c - u))
    with pytest.raises(ValueError, match="expected the shape"): cfg_denoiser(lambda x, t, c: x[:1], cond, 10, 2.)(x, t)

def test_bad_inputs():
    model, x, sig = setup(0)
    calls = []
    counting = lambda x, s: calls.append(1) or model(x, s)
    for f in (sample_euler, sample_euler_ancestral, sample_heun, sample_lms, sample_dpmpp_2m):
        with pytest.raises(ValueError, match="at least 2 sigmas"): f(counting, x, sig[:1])
        with pytest.raises(ValueError, match="strictly decreasing"): f(counting, x, sig.flip(0)[1:])
        with pytest.raises(ValueError, match="strictly decreasing"): f(counting, x, torch.cat([sig[:3], sig[2:]]))
        with pytest.raises(ValueError, match="positive"): f(counting, x, torch.tensor([2., 0., -1.]))
        with pytest.raises(ValueError, match="1-d"): f(counting, x, sig[None])
        with pytest.raises(TypeError, match="floating-point"): f(counting, x.long(), sig)
        with pytest.raises(ValueError, match="shape"): f(lambda x, s: x[:, :1], x, sig)
    assert not calls
    with pytest.raises(ValueError, match="order"): sample_lms(model, x, sig, order=0)
    with pytest.raises(ValueError, match="sigma_min"): sigmas_karras(5, 1., 0.5)
    with pytest.raises(ValueError, match="n must be"): sigmas_karras(0)
