"Tests for miniai.transformer: attention and the transformer block against PyTorch's implementations, position embeddings, the simple diffusion model."
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniai.diffusion import EmbUNetModel
from miniai.transformer import (attention, MultiHeadAttention, TransformerBlock, LearnedPosEmb, Transformer, TransformerMid,
                                SimpleDiffusionModel)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('tq,tk', [(7, 7), (5, 9), (9, 5)])
def test_attention_matches_sdpa(causal, tq, tk):
    q, k, v = rand(2, 3, tq, 8, seed=1), rand(2, 3, tk, 8, seed=2), rand(2, 3, tk, 6, seed=3)
    torch.testing.assert_close(attention(q, k, v, causal=causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal))


def test_attention_masks_match_sdpa():
    q, k, v = rand(2, 3, 6, 8, seed=1), rand(2, 3, 6, 8, seed=2), rand(2, 3, 6, 8, seed=3)
    bmask = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4)) > 0.4
    bmask[..., 0] = True   # every query sees at least one key
    torch.testing.assert_close(attention(q, k, v, mask=bmask), F.scaled_dot_product_attention(q, k, v, attn_mask=bmask))
    fmask = rand(6, 6, seed=5)
    torch.testing.assert_close(attention(q, k, v, mask=fmask), F.scaled_dot_product_attention(q, k, v, attn_mask=fmask))


def test_attention_shape_errors():
    with pytest.raises(ValueError, match='do not fit'): attention(rand(1, 4, 8), rand(1, 4, 7), rand(1, 4, 7))


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('sdpa', [False, True])
def test_mha_matches_torch(bias, sdpa):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(24, 3, bias=bias, batch_first=True).double()
    ours = MultiHeadAttention(24, 3, bias=bias, sdpa=sdpa).double().load_torch(mha)
    x = rand(2, 10, 24)
    torch.testing.assert_close(ours(x), mha(x, x, x, need_weights=False)[0])
    m = torch.ones(10, 10, dtype=torch.bool).triu(1)   # torch: True = not allowed
    torch.testing.assert_close(ours(x, causal=True), mha(x, x, x, attn_mask=m, need_weights=False)[0])
    torch.testing.assert_close(ours(x, mask=~m), mha(x, x, x, attn_mask=m, need_weights=False)[0])


def test_mha_errors():
    with pytest.raises(ValueError, match='divisor'): MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r'\(B, T, 12\)'): MultiHeadAttention(12, 3)(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match='heads'): MultiHeadAttention(12, 3).load_torch(nn.MultiheadAttention(12, 4))
    with pytest.raises(TypeError, match='MultiheadAttention'): MultiHeadAttention(12, 3).load_torch(nn.Linear(12, 12))


def test_mha_permutation_equivariant():
    torch.manual_seed(0)
    m, x, perm = MultiHeadAttention(16, 2).double(), rand(3, 8, 16), torch.randperm(8)
    torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm])


def _load_layer(blk, layer):
    blk.attn.load_torch(layer.self_attn)
    for a, b in ((blk.norm1, layer.norm1), (blk.norm2, layer.norm2), (blk.mlp[0], layer.linear1), (blk.mlp[2], layer.linear2)):
        a.load_state_dict(b.state_dict())
    return blk


@pytest.mark.parametrize('causal', [False, True])
def test_block_matches_torch_encoder_layer(causal):
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0., activation='gelu', batch_first=True,
                                       norm_first=True).double().eval()
    blk = _load_layer(TransformerBlock(32, 4, mlp_ratio=2).double(), layer).eval()
    x = rand(2, 7, 32)
    ref = layer(x, src_mask=torch.ones(7, 7, dtype=torch.bool).triu(1) if causal else None)
    torch.testing.assert_close(blk(x, causal=causal), ref)


def test_block_time_embedding_scale_shift():
    torch.manual_seed(2)
    blk = TransformerBlock(16, 2, n_emb=8).double()
    plain = TransformerBlock(16, 2).double()
    plain.load_state_dict({k: v for k, v in blk.state_dict().items() if not k.startswith('emb_proj')})
    x, t = rand(3, 5, 16), rand(3, 8, seed=1)
    assert not torch.allclose(blk(x, t), plain(x))                     # the embedding changes the output ...
    with torch.no_grad(): blk.emb_proj.weight.zero_(); blk.emb_proj.bias.zero_()
    torch.testing.assert_close(blk(x, t), plain(x))                     # ... through scale and shift only
    # a shift on the first norm equals a shifted LayerNorm bias
    with torch.no_grad(): blk.emb_proj.bias[16:32] = 0.3
    with torch.no_grad(): plain.norm1.bias += 0.3
    torch.testing.assert_close(blk(x, t), plain(x))
    with pytest.raises(ValueError, match='pass the time embedding'): blk(x)
    with pytest.raises(ValueError, match='without n_emb'): plain(x, t)


def test_pos_emb_and_stack():
    torch.manual_seed(3)
    pe = LearnedPosEmb(8, 16).double()
    x = rand(2, 5, 16)
    torch.testing.assert_close(pe(x), x + pe.pos[:5])
    with pytest.raises(ValueError, match='T <= 8'): pe(rand(2, 9, 16))
    tr = Transformer(16, 2, 2, 8).double()
    perm = torch.randperm(5)
    assert not torch.allclose(tr(x[:, perm]), tr(x)[:, perm])   # positions matter
    y = tr(x, causal=True)
    x2 = x.clone(); x2[:, 3:] = rand(2, 2, 16, seed=9)   # (a constant shift would vanish in the LayerNorm)
    y2 = tr(x2, causal=True)
    torch.testing.assert_close(y[:, :3], y2[:, :3])
    assert not torch.allclose(y[:, 3:], y2[:, 3:])


def test_transformer_mid_residual():
    torch.manual_seed(4)
    mid = TransformerMid(16, 1, 2, 16, 8)
    x, t = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    assert mid(x, t).shape == x.shape
    with torch.no_grad():
        for p in mid.transformer.norm.parameters(): p.zero_()   # the stack's output is zero: only the residual is left
    torch.testing.assert_close(mid(x, t), x)


def test_simple_diffusion_model():
    torch.manual_seed(5)
    m = SimpleDiffusionModel(1, 1, nfs=(8, 16, 32), depth=2, n_heads=2, img_size=16)
    assert isinstance(m.mid_block, TransformerMid) and len(m.mid_block.transformer.blocks) == 2
    assert m.mid_block.transformer.pos_emb.pos.shape == (16, 32)   # 4x4 tokens at the bottleneck of 16x16 images
    x, t = torch.randn(3, 1, 16, 16), torch.rand(3)
    out = m(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(m((x, t)), out)
    out.square().mean().backward()
    assert all(p.grad is not None for p in m.mid_block.parameters())
    # the rest is EmbUNetModel's: the same weights minus the middle block give the same keys
    ref = EmbUNetModel(1, 1, nfs=(8, 16, 32), num_layers=1, attn_chans=0)
    assert {k for k in m.state_dict() if not k.startswith('mid_block')} == {k for k in ref.state_dict() if not k.startswith('mid_block')}
    assert m.config['depth'] == 2 and m.config['img_size'] == 16
    with pytest.raises(ValueError, match='16x16'): m(torch.randn(2, 1, 32, 32), torch.rand(2))
    with pytest.raises(ValueError, match='divisible'): SimpleDiffusionModel(nfs=(8, 16, 32), img_size=30)
