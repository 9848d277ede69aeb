"""miniai.diffusion.train / schedules / noisepred (lessons 17, 19, 22): cosine schedule vs diffusers, the training callbacks vs noisify."""
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.datasets import DataLoaders
from miniai.diffusion import abar, linear_sched, noisify
from miniai.diffusion.noisepred import NoiseLevelCB, PredictedTimeModel, noise_level_model
from miniai.diffusion.schedules import cosine_sched
from miniai.diffusion.train import DDPMCB
from miniai.learner import MetricsCB, TrainLearner


@pytest.mark.parametrize("n", [1000, 50])
def test_cosine_sched_matches_diffusers(n):
    from diffusers import DDPMScheduler
    ref = DDPMScheduler(num_train_timesteps=n, beta_schedule='squaredcos_cap_v2')
    cs = cosine_sched(n)
    # diffusers stores float32: compare at float32 precision
    torch.testing.assert_close(cs.beta.float(), ref.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cs.abar.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert cs.abar.dtype == torch.float64 and (cs.abar[1:] < cs.abar[:-1]).all()


def test_cosine_sched_bad_input():
    with pytest.raises(ValueError, match="n_steps"): cosine_sched(0)
    with pytest.raises(ValueError, match="max_beta"): cosine_sched(10, max_beta=1.)


class _L:  # a stand-in learner holding a batch
    def __init__(self, batch): self.batch = batch


@pytest.mark.parametrize("sched", [linear_sched(), abar], ids=['linear', 'continuous'])
def test_ddpmcb_is_noisify(sched):
    x0 = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    learn = _L((x0, torch.zeros(6)))
    DDPMCB(sched, generator=torch.Generator().manual_seed(1)).before_batch(learn)
    (xt, t), eps = learn.batch
    (rxt, rt), reps = noisify(x0, getattr(sched, 'abar', sched), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(xt, rxt, rtol=0, atol=0)
    torch.testing.assert_close(t, rt, rtol=0, atol=0)
    torch.testing.assert_close(eps, reps, rtol=0, atol=0)
    assert t.is_floating_point() == callable(sched)


def test_ddpmcb_trains_with_learner():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 4, 4, generator=g)
    batches = [(x[i:i + 8], torch.zeros(8)) for i in range(0, 32, 8)]

    class Eps(nn.Module):  # a tiny eps-model taking the (x_t, t) tuple
        def __init__(self): super().__init__(); self.c = nn.Conv2d(1, 1, 3, padding=1)
        def forward(self, inp): return self.c(inp[0])
    torch.manual_seed(0)
    learn = TrainLearner(Eps(), DataLoaders(batches, batches[:1]), F.mse_loss, lr=1e-2, opt_func=torch.optim.Adam,
                         cbs=[DDPMCB(linear_sched(n_steps=10), generator=g), MetricsCB()])
    learn.fit(1)
    assert torch.isfinite(learn.loss)


def test_ddpmcb_bad_input():
    with pytest.raises(TypeError, match="abar must be"): DDPMCB('cosine')
    with pytest.raises(TypeError, match="abar must be"): NoiseLevelCB(3)


def test_noise_level_cb_and_model():
    x0 = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    learn = _L((x0, torch.zeros(5)))
    NoiseLevelCB(generator=torch.Generator().manual_seed(3)).before_batch(learn)
    xt, t = learn.batch
    (rxt, rt), _ = noisify(x0, abar, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(xt, rxt, rtol=0, atol=0)
    torch.testing.assert_close(t, rt, rtol=0, atol=0)
    m = noise_level_model((4, 8, 8))
    assert m(xt).shape == (5,)


def test_predicted_time_model():
    seen = {}
    def eps_model(x, t):
        seen['t'] = t
        return x * 2
    t_model = lambda x: x.mean((1, 2, 3)) * 10   # (B,)
    x = torch.tensor([-1., 0.05, 0.5, 3.]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    m = PredictedTimeModel(eps_model, t_model)
    out = m(x, torch.full((4,), 0.123))   # the given t is ignored
    torch.testing.assert_close(out, x * 2)
    torch.testing.assert_close(seen['t'], torch.tensor([0., 0.5, 0.999, 0.999]))
    bad = PredictedTimeModel(eps_model, lambda x: torch.zeros(len(x), 2))
    with pytest.raises(ValueError, match="one time per image"): bad(x)
    with pytest.raises(ValueError, match="t_min <= t_max"): PredictedTimeModel(eps_model, t_model, t_min=1., t_max=0.)
