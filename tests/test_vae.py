"""`miniai.vae`: the from-scratch `AutoencoderKL` against diffusers' (same state dict, same outputs), the posterior's closed forms,
loading/saving diffusers folders, and the course's MLP VAE."""
import json

import pytest
import torch
import torch.nn.functional as F

from miniai.vae import (AutoencoderKL, DiagonalGaussian, ResnetBlock2D, Downsample2D, Upsample2D, VAE,
                        kld_loss, bce_loss, vae_loss, FuncMetric)

diffusers = pytest.importorskip('diffusers')

CONFIGS = {
    'one_block': dict(in_channels=3, out_channels=3, block_out_channels=(32,), layers_per_block=1, latent_channels=4,
                      norm_num_groups=8),
    'three_blocks_lpb2': dict(in_channels=1, out_channels=2, block_out_channels=(16, 32, 32), layers_per_block=2,
                              latent_channels=3, norm_num_groups=8, scaling_factor=0.5),
    'no_attn_no_quant': dict(in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                             norm_num_groups=4, mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False),
}


def _pair(cfg, dtype=torch.float32, seed=0):
    "A randomly initialised diffusers AutoencoderKL (with random norms and biases too) and ours with its state dict."
    n = len(cfg['block_out_channels'])
    kw = dict(cfg, down_block_types=('DownEncoderBlock2D',) * n, up_block_types=('UpDecoderBlock2D',) * n)
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKL(**kw)
    with torch.no_grad():   # GroupNorm weights start at 1/0 and biases at 0: randomise everything so that a mix-up shows
        for p in ref.parameters(): p.add_(torch.randn_like(p) * 0.1)
    ours = AutoencoderKL(**kw)
    ours.load_state_dict(ref.state_dict())   # strict: every name and shape must match
    return ref.to(dtype).eval(), ours.to(dtype).eval()


@pytest.mark.parametrize('name', list(CONFIGS))
def test_module_tree_matches_diffusers(name):
    ref, ours = _pair(CONFIGS[name])
    assert list(ref.state_dict()) == list(ours.state_dict())   # same names in the same order
    assert [k for k, _ in ref.named_modules() if k] == [k for k, _ in ours.named_modules() if k]


@pytest.mark.parametrize('name', list(CONFIGS))
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_matches_diffusers(name, dtype, tol):
    cfg = CONFIGS[name]
    ref, ours = _pair(cfg, dtype)
    f = 2 ** (len(cfg['block_out_channels']) - 1)
    x = torch.randn(2, cfg['in_channels'], 8 * f, 4 * f, dtype=dtype)
    with torch.no_grad():
        pr, po = ref.encode(x).latent_dist, ours.encode(x)
        for a in ('mean', 'logvar', 'std', 'var'): torch.testing.assert_close(getattr(po, a), getattr(pr, a), rtol=tol, atol=tol)
        z = torch.randn_like(po.mean)
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, rtol=tol, atol=tol)
        torch.testing.assert_close(ours(x), ref(x).sample, rtol=tol, atol=tol)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        torch.testing.assert_close(ours(x, sample_posterior=True, generator=g1), ref(x, sample_posterior=True, generator=g2).sample,
                                   rtol=tol, atol=tol)
        torch.testing.assert_close(po.kl(), pr.kl(), rtol=tol, atol=tol)


def test_gradients_match_diffusers():
    ref, ours = _pair(CONFIGS['three_blocks_lpb2'], torch.float64)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    ref(x).sample.square().sum().backward()
    ours(x).square().sum().backward()
    for (k, a), b in zip(ref.named_parameters(), ours.parameters()): torch.testing.assert_close(b.grad, a.grad, msg=k)


def test_diagonal_gaussian_closed_forms():
    torch.manual_seed(0)
    m, lv = torch.randn(3, 4, 2, 5, dtype=torch.float64), torch.randn(3, 4, 2, 5, dtype=torch.float64)
    d = DiagonalGaussian(m, lv)
    torch.testing.assert_close(d.std, (lv / 2).exp()); torch.testing.assert_close(d.var, lv.exp())
    assert d.mode() is d.mean and d.latent_dist is d
    # KL to N(0, I) and between two Gaussians, against torch.distributions
    p = torch.distributions.Normal(m, (lv / 2).exp())
    std_normal = torch.distributions.Normal(torch.zeros_like(m), torch.ones_like(m))
    torch.testing.assert_close(d.kl(), torch.distributions.kl_divergence(p, std_normal).sum((1, 2, 3)))
    m2, lv2 = torch.randn_like(m), torch.randn_like(lv)
    q = torch.distributions.Normal(m2, (lv2 / 2).exp())
    torch.testing.assert_close(d.kl(DiagonalGaussian(m2, lv2)), torch.distributions.kl_divergence(p, q).sum((1, 2, 3)))
    s = torch.randn_like(m)
    torch.testing.assert_close(d.nll(s), -p.log_prob(s).sum((1, 2, 3)))
    # the sample is mean + std * noise from the same generator
    torch.testing.assert_close(d.sample(torch.Generator().manual_seed(5)),
                               m + (lv / 2).exp() * torch.randn(m.shape, generator=torch.Generator().manual_seed(5), dtype=m.dtype))
    # the log-variance is clamped as diffusers clamps it
    assert DiagonalGaussian(m, torch.full_like(lv, 50.)).logvar.max() == 20.
    assert DiagonalGaussian.from_moments(torch.cat([m, lv], 1)).mean.equal(m)
    with pytest.raises(ValueError, match='differ in shape'): DiagonalGaussian(m, lv[:, :2])
    with pytest.raises(ValueError, match='even number'): DiagonalGaussian.from_moments(torch.randn(2, 3, 4, 4))
    with pytest.raises(TypeError, match='floating-point'): DiagonalGaussian(m.long(), lv)


def test_sample_statistics():
    "Many samples have the posterior's mean and standard deviation."
    m, lv = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    d = DiagonalGaussian(m.expand(20000, -1, -1, -1), lv.expand(20000, -1, -1, -1))
    s = d.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.mean(0), m[0], atol=0.05 * d.std.max().item(), rtol=0)
    torch.testing.assert_close(s.std(0), (lv[0] / 2).exp(), atol=0, rtol=0.03)


def test_save_load_roundtrip_and_diffusers_reads_ours(tmp_path):
    ref, ours = _pair(CONFIGS['three_blocks_lpb2'])
    ours.save_pretrained(tmp_path / 'vae')
    conf = json.loads((tmp_path / 'vae' / 'config.json').read_text())
    assert conf['_class_name'] == 'AutoencoderKL' and conf['scaling_factor'] == 0.5
    x = torch.randn(2, 1, 16, 16)
    back = AutoencoderKL.from_pretrained(tmp_path)   # a pipeline folder: finds vae/
    theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path / 'vae')
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x), rtol=0, atol=0)
        torch.testing.assert_close(theirs(x).sample, ours(x), rtol=1e-5, atol=1e-5)
    assert back.config.scaling_factor == 0.5 and back.config['block_out_channels'] == [16, 32, 32]


def test_loads_diffusers_folder_and_fp16(tmp_path):
    ref, _ = _pair(CONFIGS['one_block'])
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = AutoencoderKL.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(): torch.testing.assert_close(ours(x), ref(x).sample, rtol=1e-5, atol=1e-5)
    half = AutoencoderKL.from_pretrained(tmp_path, dtype=torch.float16)
    assert half.dtype == torch.float16 and not half.training


def test_loads_deprecated_attention_names(tmp_path):
    "Old checkpoints call the attention weights query/key/value/proj_attn (some as 1x1 convs); they load as to_q/to_k/to_v/to_out.0."
    from safetensors.torch import save_file
    _, ours = _pair(CONFIGS['one_block'])
    old = {}
    for k, v in ours.state_dict().items():
        for new, o in (('to_q', 'query'), ('to_k', 'key'), ('to_v', 'value'), ('to_out.0', 'proj_attn')):
            if f'.{new}.' in k:
                k = k.replace(f'.{new}.', f'.{o}.')
                if k.endswith('weight'): v = v[:, :, None, None]
        old[k] = v
    assert any('.query.' in k for k in old)
    save_file(old, str(tmp_path / 'diffusion_pytorch_model.safetensors'))
    (tmp_path / 'config.json').write_text(json.dumps({'_class_name': 'AutoencoderKL', **ours.config}))
    back = AutoencoderKL.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(): torch.testing.assert_close(back(x), ours(x))


def test_refuses_pickle_and_bad_configs(tmp_path):
    _, ours = _pair(CONFIGS['one_block'])
    (tmp_path / 'config.json').write_text(json.dumps({'_class_name': 'AutoencoderKL', **ours.config}))
    torch.save(ours.state_dict(), tmp_path / 'diffusion_pytorch_model.bin')
    with pytest.raises(ValueError, match='never pickle'): AutoencoderKL.from_pretrained(tmp_path)
    (tmp_path / 'config.json').write_text(json.dumps({'_class_name': 'UNet2DModel'}))
    with pytest.raises(ValueError, match='not an AutoencoderKL'): AutoencoderKL.from_pretrained(tmp_path)
    (tmp_path / 'config.json').write_text(json.dumps({**ours.config, 'norm_type': 'spatial'}))
    with pytest.raises(ValueError, match='norm_type'): AutoencoderKL.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match='config.json'): AutoencoderKL.from_pretrained(tmp_path / 'nothing')


def test_bad_inputs():
    ae = AutoencoderKL(1, 1, ('DownEncoderBlock2D',) * 2, ('UpDecoderBlock2D',) * 2, (8, 8), norm_num_groups=4)
    with pytest.raises(ValueError, match=r'\(B, 1, H, W\)'): ae.encode(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match='multiples of 2'): ae.encode(torch.randn(2, 1, 7, 8))
    with pytest.raises(TypeError, match='floating-point'): ae.encode(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'\(B, 4, H, W\)'): ae.decode(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match='norm_num_groups'): AutoencoderKL(block_out_channels=(30,))
    with pytest.raises(ValueError, match='only .DownEncoderBlock2D'): AutoencoderKL(down_block_types=('AttnDownEncoderBlock2D',))
    with pytest.raises(ValueError, match='one entry per'): AutoencoderKL(down_block_types=('DownEncoderBlock2D',) * 2)
    with pytest.raises(ValueError, match='act_fn'): AutoencoderKL(act_fn='tanh')


def test_blocks_against_diffusers():
    "The building blocks the Stable Diffusion U-Net reuses, one by one, with a time embedding and the UNet's padding."
    from diffusers.models.resnet import ResnetBlock2D as RB
    from diffusers.models.downsampling import Downsample2D as DS
    from diffusers.models.upsampling import Upsample2D as US
    torch.manual_seed(0)
    x, temb = torch.randn(2, 8, 6, 6, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    for ref, ours, args in [(RB(in_channels=8, out_channels=16, temb_channels=12, groups=4, eps=1e-5),
                             ResnetBlock2D(8, 16, temb_channels=12, groups=4, eps=1e-5), (x, temb)),
                            (DS(8, use_conv=True, out_channels=8, padding=1, name='op'), Downsample2D(8, padding=1), (x,)),
                            (DS(8, use_conv=True, out_channels=8, padding=0, name='op'), Downsample2D(8, padding=0), (x,)),
                            (US(8, use_conv=True), Upsample2D(8), (x,))]:
        ref = ref.double()
        with torch.no_grad():
            for p in ref.parameters(): p.add_(torch.randn_like(p) * 0.1)
        ours.double().load_state_dict(ref.state_dict())
        torch.testing.assert_close(ours(*args), ref(*args), rtol=1e-10, atol=1e-10)
    assert Upsample2D(8).double()(x, output_size=(13, 11)).shape == (2, 8, 13, 11)
    with pytest.raises(ValueError, match='pass temb'): ResnetBlock2D(8, 8, temb_channels=4, groups=4).double()(x)
    with pytest.raises(ValueError, match='ignored'): ResnetBlock2D(8, 8, groups=4).double()(x, temb)


def test_mlp_vae():
    g = torch.Generator().manual_seed(0)
    vae = VAE(20, 16, 4, generator=g)
    x = torch.rand(8, 20)
    xh, mu, lv = vae(x)
    assert xh.shape == (8, 20) and mu.shape == lv.shape == (8, 4)
    # same generator state, same sample; the KL part is the closed form per element
    vae.eval()
    a = vae(x, generator=torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(a, vae(x, generator=torch.Generator().manual_seed(1))[0])
    inp = (xh, mu, lv)
    p = torch.distributions.Normal(mu, (lv / 2).exp())
    kl_ref = torch.distributions.kl_divergence(p, torch.distributions.Normal(0., 1.)).mean()
    torch.testing.assert_close(kld_loss(inp, x), kl_ref)
    torch.testing.assert_close(bce_loss(inp, x), F.binary_cross_entropy(xh.sigmoid(), x))
    torch.testing.assert_close(vae_loss(inp, x), kl_ref + bce_loss(inp, x))
    m = FuncMetric(bce_loss)
    m.update(inp, x); m.update((xh[:2], mu[:2], lv[:2]), x[:2])
    torch.testing.assert_close(m.compute().double(), (8 * bce_loss(inp, x) + 2 * bce_loss((xh[:2],), x[:2])).double() / 10)
    with pytest.raises(ValueError, match=r'\(B, 20\)'): vae(torch.rand(2, 1, 20))
    with pytest.raises(TypeError, match='callable'): FuncMetric(3)


def test_training_helpers():
    from torcheval.metrics.functional import peak_signal_noise_ratio
    from miniai.vae import AutoencoderKLTrainer, recon_mse, ae_kl_loss, psnr
    x, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.rand(4, 1, 8, 8) * 2 - 1
    ref = torch.stack([peak_signal_noise_ratio(a, b, data_range=2.) for a, b in zip(x, y)]).mean()
    assert psnr(x, y) == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match='differ in shape'): psnr(x, y[:2])
    torch.manual_seed(0)
    ours = AutoencoderKL(1, 1, ('DownEncoderBlock2D',) * 2, ('UpDecoderBlock2D',) * 2, (8, 8), norm_num_groups=4)
    tr = AutoencoderKLTrainer(ours, torch.Generator().manual_seed(0))
    xb = torch.randn(2, 1, 8, 8)
    rec, mean, logvar = tr(xb)
    post = ours.encode(xb)
    torch.testing.assert_close(rec, ours.decode(post.sample(torch.Generator().manual_seed(0))))
    torch.testing.assert_close(mean, post.mean)
    kl = post.kl().sum() / post.mean.numel()   # the KL per latent element
    torch.testing.assert_close(ae_kl_loss((rec, mean, logvar), xb, kl_weight=0.3), F.mse_loss(rec, xb) + 0.3 * kl)
    torch.testing.assert_close(recon_mse((rec,), xb), F.mse_loss(rec, xb))
    with pytest.raises(ValueError, match='differ in shape'): recon_mse((rec,), xb[:, :, :4])
