"Tests for miniai.activations: hooks are removed after use, statistics match direct computation, set_seed."
import random

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.activations import ActivationStats, Hook, Hooks, HooksCallback, append_stats, get_hist, get_min, set_seed
from miniai.learner import Callback, Learner, TrainCB


def n_hooks(model): return sum(len(m._forward_hooks) for m in model.modules())


class DLs:
    def __init__(self, train, valid): self.train, self.valid = train, valid


def make_dls(n_batches=3, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n: [(torch.randn(bs, 5, generator=g), torch.randint(0, 3, (bs,), generator=g)) for _ in range(n)]
    return DLs(mk(n_batches), mk(2))


def make_model(): return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


def test_hook_records_and_is_removed():
    model = make_model()
    outs = []
    with Hook(model[0], lambda h, m, i, o: outs.append(o.detach())) as h:
        assert n_hooks(model) == 1
        x = torch.randn(4, 5)
        model(x)
    assert n_hooks(model) == 0
    torch.testing.assert_close(outs[0], model[0](x))
    h.remove()   # removing twice is harmless


def test_hooks_context_and_delitem():
    model = make_model()
    with Hooks(model, append_stats) as hs:   # iterating a Sequential gives its 3 layers
        assert len(hs) == 3 and n_hooks(model) == 3
        del hs[0]
        assert len(hs) == 2 and n_hooks(model) == 2
        model(torch.randn(2, 5))
    assert n_hooks(model) == 0
    assert all(len(h.stats[0]) == 1 for h in hs)


def test_append_stats_matches_direct_computation():
    torch.manual_seed(0)
    lin = nn.Linear(5, 50)
    x = torch.randn(64, 5) * 3
    with Hook(lin, append_stats) as h:
        y = lin(x).detach()
        lin(x * 2)
    assert len(h.stats[0]) == 2
    torch.testing.assert_close(h.stats[0][0], y.mean())
    torch.testing.assert_close(h.stats[1][0], y.std())
    ref = torch.from_numpy(np.histogram(y.abs().numpy(), bins=40, range=(0, 10))[0]).float()
    torch.testing.assert_close(h.stats[2][0], ref)
    hist = get_hist(h)
    assert hist.shape == (40, 2)
    torch.testing.assert_close(hist[:, 0], ref.log1p())
    torch.testing.assert_close(get_min(h)[0], ref[0] / ref.sum())


def test_hooks_callback_train_only_and_removed_after_error():
    model = make_model()
    calls = []
    hc = HooksCallback(lambda h, m, i, o: calls.append(m), mod_filter=nn.Linear)
    Learner(model, make_dls(3), F.cross_entropy, cbs=[TrainCB(), hc]).fit(1)
    assert len(hc) == 2 and len(calls) == 3 * 2     # 3 training batches x 2 Linear layers, no validation
    assert n_hooks(model) == 0

    class Boom(Callback):
        def after_batch(self, learn): raise RuntimeError('boom')
    hv = HooksCallback(lambda h, m, i, o: None, mod_filter=lambda m: isinstance(m, nn.ReLU), on_valid=True)
    with pytest.raises(RuntimeError, match='boom'):
        Learner(model, make_dls(), F.cross_entropy, cbs=[TrainCB(), hv, Boom()]).fit(1)
    assert len(hv) == 1 and n_hooks(model) == 0      # cleanup_fit removed them despite the error
    with pytest.raises(TypeError, match='mod_filter'):
        HooksCallback(append_stats, mod_filter=3)


def test_activation_stats_and_plots():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    model = make_model()
    astats = ActivationStats(nn.ReLU)
    Learner(model, make_dls(4), F.cross_entropy, cbs=[TrainCB(), astats]).fit(2)
    (h,) = list(astats)
    assert len(h.stats[0]) == 8 and n_hooks(model) == 0
    assert (torch.stack(h.stats[0]) >= 0).all()        # ReLU outputs
    for f in (astats.color_dim, astats.dead_chart, astats.plot_stats): f()
    plt.close('all')
    everything = ActivationStats()
    Learner(model, make_dls(1), F.cross_entropy, cbs=[TrainCB(), everything]).fit(1)
    assert len(everything) == 4      # the Sequential and its three layers, as with the course's fc.noop


def test_set_seed():
    set_seed(42)
    a = (torch.rand(3), random.random(), np.random.rand())
    set_seed(42)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    set_seed(0, deterministic=True)
    try: assert torch.are_deterministic_algorithms_enabled()
    finally: set_seed(0)
    assert not torch.are_deterministic_algorithms_enabled()
