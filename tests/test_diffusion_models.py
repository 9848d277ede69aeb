"""Attention and U-Net models of `miniai.diffusion`: attention against PyTorch's, shapes and gradients of the U-Nets on CPU."""
import math
import pytest, torch
from torch import nn
import torch.nn.functional as F
from miniai.diffusion import (SelfAttention, SelfAttention2D, timestep_embedding, EmbResBlock, DownBlock, UpBlock,
    EmbUNetModel, CondUNetModel, drop_labels, EpsDenoiser, cfg_denoiser, sample_dpmpp_2m, ddim_sample, linear_sched, sigmas_karras)


@pytest.mark.parametrize("ni,attn_chans,T", [(32, 8, 7), (12, 12, 5), (24, 4, 1)])
def test_self_attention_matches_torch(ni, attn_chans, T):
    sa = SelfAttention(ni, attn_chans).double()
    x = torch.randn(3, T, ni, dtype=torch.float64)
    xn = F.layer_norm(x, (ni,), sa.norm.weight, sa.norm.bias)
    # reference 1: nn.MultiheadAttention with the same weights
    mha = nn.MultiheadAttention(ni, ni // attn_chans, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(sa.qkv.weight); mha.in_proj_bias.copy_(sa.qkv.bias)
        mha.out_proj.weight.copy_(sa.proj.weight); mha.out_proj.bias.copy_(sa.proj.bias)
    torch.testing.assert_close(sa(x), mha(xn, xn, xn, need_weights=False)[0], rtol=1e-10, atol=1e-10)
    # reference 2: F.scaled_dot_product_attention on heads split by hand
    q, k, v = (xn @ sa.qkv.weight.T + sa.qkv.bias).split(ni, dim=-1)
    heads = lambda z: z.reshape(3, T, ni // attn_chans, attn_chans).transpose(1, 2)
    o = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(3, T, ni)
    torch.testing.assert_close(sa(x), sa.proj(o), rtol=1e-10, atol=1e-10)

def test_self_attention_2d():
    sa = SelfAttention2D(16, 4).double()
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    ref = SelfAttention.forward(sa, x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 16, 3, 5)
    torch.testing.assert_close(sa(x), ref)
    with pytest.raises(ValueError, match="divisor"): SelfAttention(10, 4)
    with pytest.raises(ValueError, match="expected input"): SelfAttention(8, 4)(torch.randn(2, 3, 5))

def test_timestep_embedding():
    t = torch.rand(5, dtype=torch.float64) * 1000
    emb = timestep_embedding(t, 9)
    freqs = torch.exp(-math.log(10000) * torch.arange(4, dtype=torch.float64) / 3)
    torch.testing.assert_close(emb, torch.cat([(t[:, None] * freqs).sin(), (t[:, None] * freqs).cos(), torch.zeros(5, 1, dtype=torch.float64)], 1))
    assert timestep_embedding(torch.arange(3), 8).dtype == torch.float32
    with pytest.raises(ValueError, match="1-d"): timestep_embedding(torch.zeros(2, 2), 8)

def test_blocks_shapes():
    emb = torch.randn(2, 20)
    x = torch.randn(2, 8, 8, 8)
    assert EmbResBlock(20, 8, 16, attn_chans=4)(x, emb).shape == (2, 16, 8, 8)
    y, saved = DownBlock(20, 8, 16, num_layers=2)(x, emb)
    assert y.shape == (2, 16, 4, 4) and [s.shape[-1] for s in saved] == [8, 8, 4]
    up = UpBlock(20, 8, 16, 12, num_layers=2)
    ups = [torch.randn(2, 8, 4, 4), torch.randn(2, 12, 4, 4)]
    assert up(torch.randn(2, 16, 4, 4), emb, ups).shape == (2, 12, 8, 8) and ups == []

@pytest.mark.parametrize("cfg", [dict(nfs=(8, 16), num_layers=1, attn_chans=8, attn_start=1),
                                 dict(nfs=(8, 16, 24), num_layers=2, attn_chans=4, attn_start=2),
                                 dict(nfs=(8,), num_layers=1, attn_chans=0),
                                 dict(nfs=(8, 8, 16, 16), num_layers=1, attn_chans=8, attn_start=0)])
@pytest.mark.parametrize("chans", [(1, 1), (3, 2)])
def test_unet_shapes_forward_backward(cfg, chans):
    torch.manual_seed(0)
    model = EmbUNetModel(*chans, **cfg)
    x = torch.randn(3, chans[0], 16, 16)
    t = torch.tensor([0, 17, 999])
    out = model((x, t))
    assert out.shape == (3, chans[1], 16, 16)
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad(): torch.testing.assert_close(model(x, t), model((x, t)))
    with torch.no_grad(): assert model(x, 5.5).shape == out.shape   # scalar, fractional t

def test_unet_bad_inputs():
    model = EmbUNetModel(1, 1, nfs=(8, 16), attn_chans=8)
    with pytest.raises(ValueError, match="divisible"): model(torch.randn(2, 1, 7, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must be"): model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="attn_chans"): EmbUNetModel(1, 1, nfs=(8, 12), attn_chans=8)
    with pytest.raises(TypeError, match=r"model\(x, t\)"): model(torch.randn(2, 1, 8, 8))

def test_cond_unet_and_label_dropout():
    torch.manual_seed(0)
    model = CondUNetModel(4, 2, 2, nfs=(8, 16), attn_chans=8)
    x, t = torch.randn(5, 2, 8, 8), torch.randint(0, 1000, (5,))
    c = torch.tensor([0, 1, 2, 3, 4])   # 4 = null class
    out = model((x, t, c))
    assert out.shape == x.shape
    out.mean().backward()
    assert model.cond_emb.weight.grad.abs().sum(1).gt(0).all()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, c), model((x, t, c)))
        assert (model(x, t, torch.zeros(5, dtype=torch.long)) - model(x, t, c)).abs().max() > 0   # the label matters
    with pytest.raises(ValueError, match="class labels"): model(x, t, torch.tensor([0, 1, 2, 3, 5]))
    with pytest.raises(ValueError, match="integer class labels"): model(x, t, torch.rand(5))
    with pytest.raises(TypeError, match="class labels c"): model(x, t)
    labels = torch.randint(0, 4, (20000,))
    d = drop_labels(labels, 4, 0.25, generator=torch.Generator().manual_seed(0))
    # 20,000 Bernoulli(0.25) draws: standard error 0.003, tolerance 0.015
    assert abs((d == 4).float().mean().item() - 0.25) < 0.015 and torch.equal(d[d != 4], labels[d != 4])
    with pytest.raises(ValueError, match="probability"): drop_labels(labels, 4, 1.5)

def test_one_unet_serves_both_sampler_families():
    torch.manual_seed(0)
    model = EmbUNetModel(1, 1, nfs=(8, 16), attn_chans=8).eval()
    sched = linear_sched()
    x = torch.randn(2, 1, 8, 8)
    assert ddim_sample(model, x, sched, [999, 500, 0]).shape == x.shape
    den = EpsDenoiser(model, sched)
    sig = sigmas_karras(4, den.sigma_min.item(), den.sigma_max.item())
    assert sample_dpmpp_2m(den, x * sig[0], sig).shape == x.shape
    cmodel = CondUNetModel(3, 1, 1, nfs=(8, 16), attn_chans=8).eval()
    guided = EpsDenoiser(cfg_denoiser(cmodel, torch.tensor([0, 2]), cmodel.null_class, 2.), sched)
    assert sample_dpmpp_2m(guided, x * sig[0], sig).shape == x.shape
