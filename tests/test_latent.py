"""`miniai.latent`: the latent cache (keyed, atomic, never stale), the latent scale, and sampling + decoding."""
import json

import pytest
import torch

from miniai.latent import LatentCache, LatentDiffusion, decode_latents, get_sampler, latent_key, model_key, moments_to_latents
from miniai.vae import AutoencoderKL, DiagonalGaussian
from miniai.diffusion import EmbUNetModel, sample_euler_ancestral
from miniai.diffusion.edm import LogSigmaCond


def _vae(seed=0):
    torch.manual_seed(seed)
    vae = AutoencoderKL(1, 1, ('DownEncoderBlock2D',) * 2, ('UpDecoderBlock2D',) * 2, (8, 16), latent_channels=2, norm_num_groups=4,
                        sample_size=16)
    with torch.no_grad(): vae.quant_conv.bias[2:] -= 2.   # posterior std well below 1, as in a trained autoencoder
    return vae.eval()


def _data(n=40, seed=1):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_keys():
    vae, x = _vae(), _data()
    k = latent_key(vae, x)
    assert k == latent_key(_vae(), x.clone()) and len(k) == 64   # same weights and data: same key
    other = _vae()
    with torch.no_grad(): other.decoder.conv_out.weight[0, 0, 0, 0] += 1e-7
    x2 = x.clone(); x2[3, 0, 5, 5] = -x2[3, 0, 5, 5]
    keys = {k, latent_key(other, x), latent_key(vae, x2), latent_key(vae, x[:-1]), latent_key(vae, x.double()), latent_key(_vae(1), x)}
    assert len(keys) == 6
    m = model_key(vae)
    vae.config['scaling_factor'] = 0.5   # the config is part of the key too
    assert model_key(vae) != m
    with pytest.raises(TypeError, match='tensor'): latent_key(vae, [1, 2])


def test_cache_contents_and_scale(tmp_path):
    vae, x = _vae(), _data()
    c = LatentCache.encode(vae, x, tmp_path, bs=16)   # several batches
    with torch.no_grad(): post = vae.encode(x)
    assert c.moments.shape == (40, 4, 8, 8) and len(c) == 40
    torch.testing.assert_close(c.moments[:, :2], post.mean); torch.testing.assert_close(c.moments[:, 2:], post.logvar)
    # scale = 1 / std of posterior samples over the data set: Var(mean) + E[var], here against many actual samples
    m, v = post.mean.double(), post.logvar.double().exp()
    std = (m.var(unbiased=False) + v.mean()).sqrt().item()
    assert c.scale == pytest.approx(1 / std, rel=1e-5)
    samples = torch.cat([c.latents(sample=True, generator=torch.Generator().manual_seed(i)) for i in range(50)])
    assert samples.std().item() == pytest.approx(1., abs=0.02)
    torch.testing.assert_close(c.channel_mean, m.mean((0, 2, 3)).tolist())
    torch.testing.assert_close(c.latents(), c.scale * post.mean)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([c.path.name, c.meta_path.name])


def test_cache_read_back_not_recomputed(tmp_path, monkeypatch):
    vae, x = _vae(), _data()
    c1 = LatentCache.encode(vae, x, tmp_path)
    calls = []
    monkeypatch.setattr(vae, 'encode', lambda *a: calls.append(1))
    c2 = LatentCache.encode(vae, x, tmp_path)
    assert not calls and c2.key == c1.key and torch.equal(c2.moments, c1.moments)


def test_cache_never_stale(tmp_path):
    vae, x = _vae(), _data()
    c1 = LatentCache.encode(vae, x, tmp_path)
    with torch.no_grad(): vae.encoder.conv_in.weight.mul_(1.5)
    c2 = LatentCache.encode(vae, x, tmp_path)
    assert c2.key != c1.key
    with torch.no_grad(): torch.testing.assert_close(c2.moments[:, :2], vae.encode(x).mean)
    assert not torch.allclose(c2.moments, c1.moments)


@pytest.mark.parametrize('damage', ['truncate_npy', 'delete_json', 'delete_npy', 'json_other_key', 'garbage_json'])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    vae, x = _vae(), _data()
    c = LatentCache.encode(vae, x, tmp_path)
    good = c.moments.clone()
    del c
    npy, meta = next(tmp_path.glob('*.npy')), next(tmp_path.glob('*.json'))
    if damage == 'truncate_npy': npy.write_bytes(npy.read_bytes()[:1000])
    elif damage == 'delete_json': meta.unlink()
    elif damage == 'delete_npy': npy.unlink()
    elif damage == 'json_other_key': meta.write_text(json.dumps({**json.loads(meta.read_text()), 'key': 'x' * 64}))
    else: meta.write_text('{not json')
    c = LatentCache.encode(vae, x, tmp_path)
    torch.testing.assert_close(c.moments, good)


def test_failed_encoding_leaves_nothing(tmp_path, monkeypatch):
    "An error half-way (here on the third batch) leaves no partial cache, no temporary file, and no description."
    vae, x = _vae(), _data()
    real, n = vae.encode, []
    def flaky(xb):
        n.append(1)
        if len(n) == 4: raise RuntimeError('disk full')   # the first call finds the latent shape
        return real(xb)
    monkeypatch.setattr(vae, 'encode', flaky)
    with pytest.raises(RuntimeError, match='disk full'): LatentCache.encode(vae, x, tmp_path, bs=10)
    assert list(tmp_path.iterdir()) == []


def test_loader_and_moments_to_latents(tmp_path):
    vae, x = _vae(), _data()
    c = LatentCache.encode(vae, x, tmp_path)
    y = torch.arange(40)
    xb, yb = next(iter(c.loader(8, labels=y, shuffle=False, sample=False)))
    torch.testing.assert_close(xb, c.latents(slice(0, 8))); assert yb.equal(y[:8])
    xb, _ = next(iter(c.loader(8, shuffle=False, generator=torch.Generator().manual_seed(3))))
    post = DiagonalGaussian.from_moments(c.moments[:8])
    torch.testing.assert_close(xb, c.scale * post.sample(torch.Generator().manual_seed(3)))
    torch.testing.assert_close(moments_to_latents(c.moments[:8], 2., sample=False), 2 * post.mean)
    with pytest.raises(ValueError, match='labels'): c.loader(8, labels=y[:5])


def test_generate_and_decode(tmp_path):
    vae = _vae()
    torch.manual_seed(0)
    net = LogSigmaCond(EmbUNetModel(2, 2, nfs=(8, 16), num_layers=1, attn_chans=0)).eval()
    ld = LatentDiffusion(net, vae, scale=2., sig_data=1.)
    assert ld.latent_shape == (2, 8, 8)
    a = ld.generate(5, steps=3, generator=torch.Generator().manual_seed(0), bs=2)
    b = ld.generate(5, steps=3, generator=torch.Generator().manual_seed(0), bs=5)
    assert a.shape == (5, 1, 16, 16) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)   # the batch size does not change the samples
    z = ld.sample_latents(3, steps=3, sampler='euler_ancestral', generator=torch.Generator().manual_seed(1))
    assert z.shape == (3, 2, 8, 8)
    with torch.no_grad(): torch.testing.assert_close(decode_latents(vae, z, 2.), vae.decode(z / 2.).clamp(-1, 1))
    assert get_sampler('euler_ancestral') is sample_euler_ancestral
    with pytest.raises(ValueError, match='sampler must be one of'): get_sampler('ddim')
    with pytest.raises(ValueError, match='positive'): LatentDiffusion(net, vae, scale=0.)
