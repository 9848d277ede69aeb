"""`miniai.text`: attention and transformer blocks against diffusers', the tokenizer, the text encoder's masks, captions,
the text-conditioned U-Net, guidance, and the pipeline's save/load."""
import json
import math

import pytest
import torch

from miniai.text import (CrossAttention, GEGLU, FeedForward, BasicTransformerBlock, SpatialTransformer, WordTokenizer, TextEncoder,
                         TextUNetModel, TextToImageNet, TextToImage, Captioner, CaptionEDMCB, fmnist_captions, FMNIST_NAMES)
from miniai.vae import AutoencoderKL


def _randomize(m, s=0.1):
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * s)
    return m


@pytest.mark.parametrize('cross', [False, True])
@pytest.mark.parametrize('masked', [False, True])
def test_cross_attention_matches_diffusers(cross, masked):
    pytest.importorskip('diffusers')   # a dev dependency: only the comparisons with diffusers need it
    from diffusers.models.attention_processor import Attention
    torch.manual_seed(0)
    ref = _randomize(Attention(24, cross_attention_dim=12 if cross else None, heads=3, dim_head=8)).double()
    ours = CrossAttention(24, 12 if cross else None, heads=3, dim_head=8).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 10, 24, dtype=torch.float64)
    ctx = torch.randn(2, 6, 12, dtype=torch.float64) if cross else None
    M = 6 if cross else 10
    mask = torch.rand(2, M) > 0.4 if masked else None
    if mask is not None: mask[:, 0] = True
    bias = None if mask is None else (~mask).double()[:, None, :] * -1e9   # diffusers takes an additive bias (B, 1, M)
    torch.testing.assert_close(ours(x, ctx, mask), ref(x, ctx, attention_mask=bias), rtol=1e-10, atol=1e-10)


def test_cross_attention_causal_and_errors():
    torch.manual_seed(0)
    ca = CrossAttention(8, heads=2, dim_head=4).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    a = ca(x, causal=True)
    x2 = x.clone(); x2[:, 3:] = torch.randn(1, 2, 8, dtype=torch.float64)
    torch.testing.assert_close(ca(x2, causal=True)[:, :3], a[:, :3])   # earlier positions do not see later ones
    assert not torch.allclose(ca(x2)[:, :3], ca(x)[:, :3])
    with pytest.raises(ValueError, match='x must be'): ca(torch.randn(1, 5, 7))
    with pytest.raises(ValueError, match='context must be'): ca(x.float(), torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match='mask must be'): ca(x, mask=torch.ones(1, 5))


def test_transformer_blocks_match_diffusers():
    pytest.importorskip('diffusers')
    from diffusers.models.attention import BasicTransformerBlock as RefBlock, FeedForward as RefFF
    from diffusers import Transformer2DModel
    torch.manual_seed(0)
    ref = _randomize(RefBlock(32, 4, 8, cross_attention_dim=16, activation_fn='geglu')).double()
    ours = BasicTransformerBlock(32, 4, 8, cross_attention_dim=16).double()
    ours.load_state_dict(ref.state_dict())
    x, ctx = torch.randn(2, 9, 32, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(ours(x, ctx, mask), ref(x, encoder_hidden_states=ctx, encoder_attention_mask=(~mask).double()[:, None] * -1e9),
                               rtol=1e-10, atol=1e-10)
    ff_ref = _randomize(RefFF(32, mult=4, activation_fn='geglu')).double()
    ff = FeedForward(32).double(); ff.load_state_dict(ff_ref.state_dict())
    torch.testing.assert_close(ff(x), ff_ref(x), rtol=1e-10, atol=1e-10)
    for linear in (False, True):
        ref = _randomize(Transformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=32, cross_attention_dim=16, norm_num_groups=8,
                                            use_linear_projection=linear)).double().eval()
        ours = SpatialTransformer(32, 4, 8, 16, norm_num_groups=8, use_linear_projection=linear).double()
        ours.load_state_dict(ref.state_dict())
        h = torch.randn(2, 32, 3, 4, dtype=torch.float64)
        torch.testing.assert_close(ours(h, ctx, mask), ref(h, encoder_hidden_states=ctx, encoder_attention_mask=mask.double()).sample,
                                   rtol=1e-10, atol=1e-10)


def test_geglu():
    g = GEGLU(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    h, gate = (x @ g.proj.weight.T + g.proj.bias).split(4, -1)
    torch.testing.assert_close(g(x), h * 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2))))


def test_tokenizer():
    tok = WordTokenizer.from_texts(['a photo of a t-shirt', 'an ankle boot, centered'])
    assert tok.itos[:4] == ['<pad>', '<bos>', '<eos>', '<unk>'] and tok.max_len == 7
    ids, mask = tok.encode(['A photo of a T-shirt', 'boot'])
    assert ids.shape == (2, 7) and mask.dtype == torch.bool and mask[1].tolist() == [True, True, True, False, False, False, False]
    assert tok.decode(ids[0]) == 'a photo of a t-shirt' and ids[0, 0] == tok.bos_id and ids[1, 2] == tok.eos_id
    with pytest.warns(UserWarning, match="'zebra'"): ids, _ = tok.encode('a zebra')
    assert ids[0, 2] == tok.unk_id
    with pytest.raises(ValueError, match='at most 5'): tok.encode('a photo of a big old boot')
    with pytest.raises(TypeError, match='str'): tok.encode([3])
    back = WordTokenizer.from_json(tok.to_json())
    assert back.itos == tok.itos and back.max_len == tok.max_len
    assert tok.encode('')[1].sum() == 2   # <bos> <eos>


def test_text_encoder_masks():
    torch.manual_seed(0)
    te = TextEncoder(20, 8, dim=16, n_layers=2, heads=4).double()
    ids = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0]])
    mask = ids != 0
    out = te(ids, mask)
    ids2 = ids.clone(); ids2[0, 4:] = torch.tensor([7, 8, 9, 10])   # different padding ids, masked out
    torch.testing.assert_close(te(ids2, mask)[:, :4], out[:, :4])
    assert out.shape == (1, 8, 16)
    causal = TextEncoder(20, 8, dim=16, n_layers=2, heads=4, causal=True).double()
    ids3 = ids.clone(); ids3[0, 2] = 9
    torch.testing.assert_close(causal(ids3)[:, :2], causal(ids)[:, :2])   # tokens before the change see nothing of it
    with pytest.raises(ValueError, match='T <= 8'): te(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r'\[0, 20\)'): te(torch.full((1, 3), 20))
    with pytest.raises(TypeError, match='torch.long'): te(torch.zeros(1, 3))


def test_captions_and_captioner():
    caps = fmnist_captions()
    assert ('a photo of a sneaker', 7) in caps and ('an ankle boot', 9) in caps and ('ankle boot', 9) in caps
    assert {k for _, k in caps} == set(range(10)) and len(FMNIST_NAMES) == 10
    tok = WordTokenizer.from_texts([c for c, _ in caps])
    cap = Captioner(tok, caps, p_uncond=0.25)
    labels = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0))
    ids, mask = cap(labels, torch.Generator().manual_seed(1))
    empty = mask.sum(1) == 2
    assert abs(empty.float().mean().item() - 0.25) < 0.03
    lookup = {tok.decode(tok.encode(c)[0][0]): k for c, k in caps}
    assert all(lookup[tok.decode(i)] == int(l) for i, l in zip(ids[~empty][:500], labels[~empty][:500]))
    a, _ = cap(labels[:50], torch.Generator().manual_seed(2)); b, _ = cap(labels[:50], torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r'\[0, 10\)'): cap(torch.tensor([10]))
    with pytest.raises(ValueError, match='probability'): Captioner(tok, caps, p_uncond=2)


def _pipeline():
    torch.manual_seed(0)
    caps = fmnist_captions()
    tok = WordTokenizer.from_texts([c for c, _ in caps])
    te = TextEncoder(len(tok), tok.max_len, dim=16, n_layers=1, heads=2)
    un = TextUNetModel(2, 2, nfs=(16, 32), context_dim=16, attn_levels=(0, 1), dim_head=8, norm_num_groups=4)
    vae = AutoencoderKL(1, 1, ('DownEncoderBlock2D',) * 2, ('UpDecoderBlock2D',) * 2, (8, 8), latent_channels=2, norm_num_groups=4, sample_size=8)
    return TextToImage(tok, te, un, vae.eval(), scale=1.3, sig_data=0.9).eval()


def test_unet_shapes_and_gradients():
    p = _pipeline()
    net = TextToImageNet(p.text_encoder, p.unet)
    ids, mask = p.tokenizer.encode(['a bag', 'a photo of a dress', ''])
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    out = net(x, torch.randn(3), ids, mask)
    assert out.shape == (3, 2, 4, 4)
    out.square().sum().backward()
    assert x.grad is not None and p.text_encoder.token_embedding.weight.grad is not None
    assert all(q.grad is not None for q in p.unet.parameters())
    with pytest.raises(ValueError, match='divisible by 2'): p.unet(torch.randn(1, 2, 3, 4), 0., torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match='context must be'): p.unet(torch.randn(1, 2, 4, 4), 0., torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match='attn_levels'): TextUNetModel(nfs=(8, 16), attn_levels=(2,))


def test_guidance_and_generate():
    p = _pipeline()
    ctx, mask = p.encode_prompts(['a bag', 'trousers'])
    uc = tuple(t.expand(2, *t.shape[1:]) for t in p.encode_prompts(''))
    x, s = torch.randn(2, 2, 4, 4), torch.tensor([2., 0.5])
    with torch.no_grad():
        d_c, d_u = p.denoiser(ctx, mask)(x, s), p.denoiser(*uc)(x, s)
        torch.testing.assert_close(p.denoiser(ctx, mask, 3., uc)(x, s), d_u + 3 * (d_c - d_u), rtol=1e-5, atol=1e-5)
    imgs = p.generate(['a bag', 'trousers', 'a coat'], steps=3, guidance_scale=2., generator=torch.Generator().manual_seed(0), progress=False, bs=2)
    assert imgs.shape == (3, 1, 8, 8) and imgs.min() >= 0 and imgs.max() <= 1
    again = p.generate(['a bag', 'trousers', 'a coat'], steps=3, guidance_scale=2., generator=torch.Generator().manual_seed(0), progress=False, bs=3)
    torch.testing.assert_close(imgs, again, rtol=1e-4, atol=1e-4)
    z = p.generate('a bag', steps=3, sampler='euler_ancestral', generator=torch.Generator().manual_seed(0), progress=False, latents=True)
    assert z.shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match='guidance_scale'): p.generate('a bag', guidance_scale=-1)
    with pytest.warns(UserWarning, match='giraffe'): p.generate('a giraffe', steps=2, progress=False)


def test_guidance_interval():
    "Guidance only for sigma in (lo, hi]: each sample of a batch is guided or plain by its own sigma; generate honours it."
    p = _pipeline()
    ctx, mask = p.encode_prompts(['a bag', 'trousers', 'a coat'])
    uc = tuple(t.expand(3, *t.shape[1:]) for t in p.encode_prompts(''))
    x, s = torch.randn(3, 2, 4, 4), torch.tensor([2., 0.5, 1.])
    with torch.no_grad():
        full, plain = p.denoiser(ctx, mask, 3., uc)(x, s), p.denoiser(ctx, mask)(x, s)
        lim = p.denoiser(ctx, mask, 3., uc, (1., 5.))(x, s)
        torch.testing.assert_close(lim[[0]], full[[0]]); torch.testing.assert_close(lim[[1, 2]], plain[[1, 2]])   # 1 is outside (1, 5]
        torch.testing.assert_close(p.denoiser(ctx, mask, 3., uc, (0., 80.))(x, s), full)
        torch.testing.assert_close(p.denoiser(ctx, mask, 3., uc, (5., 80.))(x, s), plain)
    gen = lambda **kw: p.generate(['a bag', 'trousers'], steps=4, generator=torch.Generator().manual_seed(0), progress=False, **kw)
    torch.testing.assert_close(gen(guidance_scale=3., guidance_interval=(0., 1e3)), gen(guidance_scale=3.))
    torch.testing.assert_close(gen(guidance_scale=3., guidance_interval=(100., 1e3)), gen(guidance_scale=1.))
    assert not torch.allclose(gen(guidance_scale=3., guidance_interval=(1., 20.)), gen(guidance_scale=3.))
    for bad in [(5., 1.), (-1., 2.), (1.,)]:
        with pytest.raises(ValueError, match='guidance_interval'): p.generate('a bag', guidance_interval=bad)


def test_save_load(tmp_path):
    p = _pipeline()
    p.info['note'] = 'test'
    p.save(tmp_path)
    conf = json.loads((tmp_path / 'config.json').read_text())
    assert conf['scale'] == 1.3 and conf['info'] == {'note': 'test'} and conf['unet']['nfs'] == [16, 32]
    back = TextToImage.load(tmp_path, vae=p.vae)
    a = p.generate(['a bag'], steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    b = back.generate(['a bag'], steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(a, b)
    other = AutoencoderKL(1, 1, ('DownEncoderBlock2D',) * 2, ('UpDecoderBlock2D',) * 2, (8, 8), latent_channels=2, norm_num_groups=4, sample_size=8)
    with pytest.raises(ValueError, match='another autoencoder'): TextToImage.load(tmp_path, vae=other)
    with pytest.raises(FileNotFoundError, match='tokenizer.json'):
        (tmp_path / 'tokenizer.json').unlink(); TextToImage.load(tmp_path, vae=p.vae)


def test_caption_edm_cb():
    from types import SimpleNamespace
    p = _pipeline()
    cap = Captioner(p.tokenizer, p_uncond=0.)
    cb = CaptionEDMCB(cap, sig_data=0.9, generator=torch.Generator().manual_seed(0))
    learn = SimpleNamespace(batch=(torch.randn(4, 2, 4, 4), torch.tensor([0, 3, 7, 9])))
    cb.before_batch(learn)
    (x, sig, ids, mask), target = learn.batch
    assert x.shape == target.shape == (4, 2, 4, 4) and sig.shape == (4,) and ids.shape == mask.shape == (4, p.tokenizer.max_len)
    assert mask.sum(1).min() > 2   # no empty captions with p_uncond=0
