"""`miniai.diffusion`'s API contract: arguments are used or rejected (never accepted and ignored), guidance refuses an
unconditional model with a clear error, one schedule type passes one validating gate, and names live in concept modules
while the course's import paths keep working."""
import importlib
from types import SimpleNamespace
import pytest, torch
from miniai.diffusion import (linear_sched, cosine_sched, abar, noisify, collate_ddpm, dl_ddpm, ddpm_sample, ddim_sample,
    ddim_step, sigmas_karras, EpsDenoiser, KarrasDenoiser, cfg_denoiser, sample_lms, sample_dpmpp_2m, EmbUNetModel, CondUNetModel, DDPMCB, NoiseLevelCB, PredictedTimeModel)

def g(seed): return torch.Generator().manual_seed(seed)

def never_called(*args, **kwargs): raise AssertionError("the model must not be called")

# ---- 2. arguments accepted and ignored ----

@pytest.mark.parametrize("f", [sample_lms, sample_dpmpp_2m])
def test_deterministic_samplers_reject_noise(f):
    sig, x = sigmas_karras(5, 0.1, 10.), torch.randn(2, 3)
    with pytest.raises(ValueError, match="draws no noise"): f(never_called, x, sig, generator=g(0))
    with pytest.raises(ValueError, match="noise_sampler"): f(never_called, x, sig, noise_sampler=lambda s, sn: torch.randn(2, 3))
    assert f(lambda x, s: x * 0.5, x, sig, generator=None, noise_sampler=None).shape == x.shape   # None is the default

def test_ddim_step_rejects_sig():
    x, e = torch.randn(2, 3), torch.randn(2, 3)
    a, a1 = abar(torch.tensor(0.5)), abar(torch.tensor(0.4))
    with pytest.raises(ValueError, match="sig"): ddim_step(x, torch.tensor(0.5), e, a, a1, 1 - a, 1 - a1, 1., 0.3)
    with pytest.raises(ValueError, match="eta"): ddim_step(x, torch.tensor(0.5), e, a, a1, 1 - a, 1 - a1, 0., sig=0.)
    # sig=None (what `sample` passes) is the course's step: noise std eta * sqrt((1 - a1) / (1 - a) * (1 - a / a1))
    out = ddim_step(x, torch.tensor(0.5), e, a, a1, 1 - a, 1 - a1, 0., None)
    x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
    torch.testing.assert_close(out, a1.sqrt() * x0 + (1 - a1).sqrt() * e)

# ---- 3. guidance needs a conditional model ----

def test_cfg_denoiser_refuses_an_unconditional_model():
    unet = EmbUNetModel(1, 1, nfs=(8, 16), attn_chans=0).eval()
    for m in (unet, lambda x, t: x, lambda x, t, **kw: x):
        with pytest.raises(TypeError, match=r"model\(x, t, c\) with class labels"): cfg_denoiser(m, 0, 3, 2.)
    # a wrapper that passes extra arguments on: the inner model's failure is explained on the first call
    for wrapped in (KarrasDenoiser(unet), EpsDenoiser(unet, linear_sched()), PredictedTimeModel(unet, lambda x: x.mean((1, 2, 3)))):
        guided = cfg_denoiser(wrapped, torch.tensor([0, 1]), 3, 2.)
        with torch.no_grad(), pytest.raises(TypeError, match=r"class labels.*CondUNetModel"): guided(torch.randn(2, 1, 8, 8), torch.tensor([1., 2.]))
    # a conditional model works, directly or wrapped
    cmodel = CondUNetModel(3, 1, 1, nfs=(8, 16), attn_chans=0).eval()
    with torch.no_grad():
        assert cfg_denoiser(cmodel, torch.tensor([0, 1]), 3, 2.)(torch.randn(2, 1, 8, 8), torch.tensor([5, 7])).shape == (2, 1, 8, 8)
        assert cfg_denoiser(KarrasDenoiser(cmodel), torch.tensor([0, 1]), 3, 2.)(torch.randn(2, 1, 8, 8), torch.tensor([1., 2.])).shape == (2, 1, 8, 8)

# ---- 4. one schedule type, one gate ----

def test_schedules_are_one_type():
    from miniai.diffusion import Schedule, as_schedule
    for s in (linear_sched(), cosine_sched(50)):
        assert type(s) is Schedule and all(getattr(s, n).dtype == torch.float64 for n in ('beta', 'alpha', 'abar', 'sigma'))
        assert s.a is s.alpha and s.sig is s.sigma and len(s) == len(s.abar)
        torch.testing.assert_close(s.abar, torch.cumprod(1 - s.beta, 0))
        torch.testing.assert_close(s.sigmas, ((1 - s.abar) / s.abar).sqrt())
        torch.testing.assert_close(EpsDenoiser(None, s).sigmas, s.sigmas)
        assert as_schedule(s) is s   # validated once, when made
        back = as_schedule(s.abar)
        assert torch.equal(back.abar, s.abar)
        torch.testing.assert_close(back.beta, s.beta)
    course = SimpleNamespace(a=linear_sched().alpha.float(), abar=linear_sched().abar.float(), sig=linear_sched().sigma.float())
    torch.testing.assert_close(as_schedule(course).abar, course.abar.double())
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    torch.testing.assert_close(as_schedule(ref.alphas_cumprod).beta.float(), ref.betas, rtol=1e-4, atol=1e-7)

BAD = [(torch.tensor([0.5, 0.9]), ValueError, "non-increasing"), (torch.tensor([1.5, 0.9]), ValueError, r"\(0, 1\]"),
       (torch.tensor([0.9, 0.]), ValueError, r"\(0, 1\]"), (torch.tensor([]), ValueError, "non-empty"),
       (torch.full((2, 3), 0.5), ValueError, "1-d"), (torch.tensor([0.9, float('nan')]), ValueError, "finite"),
       ('linear', TypeError, "must be a Schedule")]

@pytest.mark.parametrize("bad,err,msg", BAD, ids=['increasing', 'above1', 'zero', 'empty', '2d', 'nan', 'str'])
def test_every_boundary_validates_the_schedule(bad, err, msg):
    x = torch.randn(4, 1, 2, 2)
    ds = [{'image': torch.randn(1, 2, 2)} for _ in range(4)]
    calls = [lambda: noisify(x, bad), lambda: collate_ddpm(ds, bad), lambda: dl_ddpm(ds, bad, 2), lambda: DDPMCB(bad),
             lambda: NoiseLevelCB(bad), lambda: EpsDenoiser(never_called, bad), lambda: ddpm_sample(never_called, x, bad),
             lambda: ddim_sample(never_called, x, bad, [1, 0])]
    for call in calls:
        with pytest.raises(err, match=msg): call()

def test_samplers_need_a_discrete_schedule():
    # the continuous abar(t) is a function: noisify and the callbacks take it, the discrete samplers refuse it clearly
    x = torch.randn(4, 1, 2, 2)
    for call in (lambda: ddpm_sample(never_called, x, abar), lambda: ddim_sample(never_called, x, abar, [1, 0]),
                 lambda: EpsDenoiser(never_called, abar)):
        with pytest.raises(TypeError, match="discrete"): call()
    (xt, t), _ = noisify(x, abar, generator=g(0))
    assert t.is_floating_point()
    DDPMCB(abar); NoiseLevelCB(abar)

# ---- 5. modules by concept, old import paths kept ----

def test_helpers_have_one_home():
    core = importlib.import_module('miniai.diffusion.core')
    assert core.__all__ == []
    for name in ('_randn', '_check_x', '_check_out', '_steps', '_cdt'):
        f = getattr(core, name)
        assert f.__module__ == 'miniai.diffusion.core'
        for mod in ('ddpm', 'ddim', 'karras'):
            m = importlib.import_module(f'miniai.diffusion.{mod}')
            assert getattr(m, name, f) is f, f"{mod} defines its own {name}"

def test_schedules_live_in_the_schedules_module():
    sch = importlib.import_module('miniai.diffusion.schedules')
    for name in ('Schedule', 'as_schedule', 'linear_sched', 'cosine_sched', 'abar', 'inv_abar'):
        assert getattr(sch, name).__module__ == 'miniai.diffusion.schedules' and name in sch.__all__
    # the course's import paths (and their `import *`) keep working
    for mod, names in (('ddpm', ['linear_sched']), ('ddim', ['abar', 'inv_abar'])):
        m = importlib.import_module(f'miniai.diffusion.{mod}')
        for n in names: assert getattr(m, n) is getattr(sch, n) and n in m.__all__
    from miniai.diffusion.ddpm import linear_sched as a
    from miniai.diffusion.ddim import abar as b, inv_abar as c
    from miniai.diffusion.schedules import cosine_sched as d
    assert (a, b, c, d) == (sch.linear_sched, sch.abar, sch.inv_abar, sch.cosine_sched)
