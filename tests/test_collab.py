"Tests for miniai.collab: reading MovieLens files, codes from the training split, DotProductBias against its formula, RMSE, the look inside, export round trip."
import math

import pytest
import torch
import torch.nn.functional as F

from miniai.collab import (RMSE, DotProductBias, EmbeddingNN, collab_dls, collab_learner, item_bias_ranking, load_movielens,
                           nearest_items)
from miniai.export import load_learner


def fake_movielens(d, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, i = torch.randint(1, 21, (n,), generator=g), torch.randint(1, 31, (n,), generator=g)
    r = torch.randint(1, 6, (n,), generator=g)
    d.mkdir(exist_ok=True)
    (d / 'ml-100k.inter').write_text('user_id:token\titem_id:token\trating:float\ttimestamp:float\n'
                                     + ''.join(f'{a}\t{b}\t{c}\t{k}\n' for k, (a, b, c) in enumerate(zip(u.tolist(), i.tolist(), r.tolist()))))
    (d / 'ml-100k.item').write_text('item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n'
                                    + ''.join(f'{k}\tFilm {k}\t{1990 + k}\tDrama\n' for k in range(1, 31)))
    return u, i, r


def test_load_movielens(tmp_path):
    u, i, r = fake_movielens(tmp_path / 'ml')
    ml = load_movielens(tmp_path / 'ml')
    assert torch.equal(ml['user'], u) and torch.equal(ml['item'], i) and torch.equal(ml['rating'], r.float())
    assert ml['titles'][3] == 'Film 3 (1993)'


def test_real_movielens_if_installed():
    try: ml = load_movielens()
    except FileNotFoundError as e: pytest.skip(str(e))
    assert len(ml['rating']) == 100_000 and len(ml['user'].unique()) == 943 and len(ml['item'].unique()) == 1682
    assert ml['titles'][1] == 'Toy Story (1995)'


def test_codes_come_from_the_training_split(tmp_path):
    users, items, ratings = [1, 1, 2, 2, 3, 9], [5, 6, 5, 6, 5, 7], [1., 2., 3., 4., 5., 3.]
    dls = collab_dls(users, items, ratings, valid_pct=0.2, seed=0, bs=2)
    trn, val = dls.splits
    xv = torch.cat([x for x, _ in dls.valid])
    for k, j in enumerate(val.tolist()):
        u_known = users[j] in [users[t] for t in trn.tolist()]
        assert (xv[k, 0] != 0) == u_known
        if u_known: assert dls.classes['user'][xv[k, 0]] == str(users[j])


def test_dot_product_bias_formula():
    torch.manual_seed(0)
    m = DotProductBias(5, 7, 3, y_range=(0, 5.5)).double()
    x = torch.tensor([[1, 2], [4, 6], [0, 0]])
    uf, itf, ub, ib = (e.weight for e in (m.user_factors, m.item_factors, m.user_bias, m.item_bias))
    exp = torch.sigmoid((uf[x[:, 0]] * itf[x[:, 1]]).sum(1) + ub[x[:, 0], 0] + ib[x[:, 1], 0]) * 5.5
    torch.testing.assert_close(m(x), exp)
    assert DotProductBias(5, 7, 3, y_range=None)(x).shape == (3,)
    nn_m = EmbeddingNN([(5, 3), (7, 4)], [8], y_range=(0, 5.5)).eval()
    assert nn_m(x).shape == (3,) and ((nn_m(x) > 0) & (nn_m(x) < 5.5)).all()


def test_rmse():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(50, generator=g), torch.randn(50, generator=g)
    m = RMSE().update(p[:20], t[:20]).update(p[20:], t[20:])
    assert math.isclose(m.compute().item(), F.mse_loss(p.double(), t.double()).sqrt().item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match='shape'): RMSE().update(p, t[:, None])


def test_learner_inside_and_export(tmp_path):
    u, i, r = fake_movielens(tmp_path / 'ml', n=600)
    ml = load_movielens(tmp_path / 'ml')
    dls = collab_dls(ml['user'], ml['item'], ml['rating'], seed=1, bs=32, item_names=ml['titles'])
    torch.manual_seed(0)
    learn = collab_learner(dls, n_factors=4, device='cpu', progress=False)
    learn.fit_one_cycle(2, 1e-2, wd=0.1)
    p, t = learn.get_preds()
    assert math.isclose(float(learn.history[-1]['rmse']), (p - t).pow(2).mean().sqrt().item(), abs_tol=1e-3)
    low, high = item_bias_ranking(learn, 3)
    b = learn.model.item_bias.weight[1:, 0].detach()
    assert [v for _, v in low] == pytest.approx(b.sort().values[:3].tolist())
    assert [v for _, v in high] == pytest.approx(b.sort(descending=True).values[:3].tolist())
    near = nearest_items(learn, 'Film 3 (1993)', n=2)
    f = learn.model.item_factors.weight.detach()
    k = learn.classes['item'].index('Film 3 (1993)')
    sims = F.cosine_similarity(f, f[k][None]); sims[0] = sims[k] = -2
    assert [n for n, _ in near] == [learn.classes['item'][j] for j in sims.topk(2).indices]
    learn.export(tmp_path / 'c.safetensors')
    l2 = load_learner(tmp_path / 'c.safetensors')
    assert torch.equal(l2.get_preds(dls.valid)[0], p)
    assert l2.predict(('3', 'Film 3 (1993)'))[0] == learn.predict(('3', 'Film 3 (1993)'))[0]
    nn_learn = collab_learner(dls, use_nn=True, layers=[8], device='cpu', progress=False)
    nn_learn.fit_one_cycle(1, 1e-2)
    nn_learn.export(tmp_path / 'n.safetensors')
    assert torch.equal(load_learner(tmp_path / 'n.safetensors').get_preds(dls.valid)[0], nn_learn.get_preds()[0])
