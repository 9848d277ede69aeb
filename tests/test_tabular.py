"Tests for miniai.tabular: preprocessing statistics from the training rows only, _na columns, unseen categories, fastai's embedding sizes and layers, export round trip with the procs."
import json
import math

import pytest
import torch

from miniai.tabular import (TabularModel, TabularProcs, emb_sz_rule, read_csv_columns, split_rows,
                            tabular_dls, tabular_learner)
from miniai.export import load_learner


def make_cols(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 3, (n,), generator=g).tolist()
    x = torch.randn(n, generator=g).tolist()
    z = torch.randn(n, generator=g).tolist()
    cols = {'cat': [['red', 'green', 'blue'][i] for i in a], 'x': [f'{v:.4f}' for v in x], 'z': [f'{v:.4f}' for v in z],
            'y': ['yes' if (v > 0) ^ (i == 1) else 'no' for v, i in zip(x, a)]}
    cols['x'][3] = None; cols['z'][50] = None
    return cols


def test_procs_use_training_rows_only():
    cols = make_cols()
    trn, val = list(range(40)), list(range(40, 60))
    p = TabularProcs(['cat'], ['x', 'z']).fit(cols, trn)
    xs = torch.tensor([float(cols['x'][i]) for i in trn if cols['x'][i] is not None], dtype=torch.float64)
    med = float(xs.median())
    filled = torch.tensor([float(cols['x'][i]) if cols['x'][i] is not None else med for i in trn], dtype=torch.float64)
    assert p.medians['x'] == med and math.isclose(p.means['x'], float(filled.mean())) and math.isclose(p.stds['x'], float(filled.std(unbiased=False)))
    assert p.na_cols == ['x']                       # z's hole is in a validation row: no indicator column for it
    cols2 = dict(cols); cols2['x'] = cols['x'][:40] + ['1000'] * 20; cols2['cat'] = cols['cat'][:40] + ['purple'] * 20
    p2 = TabularProcs(['cat'], ['x', 'z']).fit(cols2, trn)
    assert p2.state() == p.state()                  # validation values change nothing
    codes, vals = p2.transform(cols2, val)
    assert (codes[:, 0] == 0).all()                 # an unseen category is #na#
    codes, vals = p.transform(cols, [3, 50])
    assert codes[:, 1].tolist() == [2, 1]           # x_na: True for row 3, False for row 50
    assert math.isclose(vals[0, 0].item(), (med - p.means['x']) / p.stds['x'], rel_tol=1e-5)
    assert math.isclose(vals[1, 1].item(), (p.medians['z'] - p.means['z']) / p.stds['z'], rel_tol=1e-5)
    p3 = TabularProcs.from_state(json.loads(json.dumps(p.state())))
    assert torch.equal(p3.transform(cols)[0], p.transform(cols)[0]) and torch.equal(p3.transform(cols)[1], p.transform(cols)[1])
    with pytest.raises(ValueError, match='continuous'): TabularProcs([], ['cat']).fit(cols, trn)
    with pytest.raises(ValueError, match="no column 'w'"): TabularProcs(['w'], []).fit(cols, trn)


def test_emb_sz_rule_and_model_layers():
    assert [emb_sz_rule(n) for n in (2, 3, 10, 100, 10**6)] == [2, 3, 6, 21, 600]
    assert all(emb_sz_rule(n) == min(600, round(1.6 * n ** 0.56)) for n in range(2, 500))
    m = TabularModel([(4, 3), (3, 2)], 2, 2, [8, 4], ps=[0.1, 0.2])
    kinds = [type(o).__name__ for o in m.layers]
    assert kinds == ['Linear', 'ReLU', 'BatchNorm1d', 'Dropout', 'Linear', 'ReLU', 'BatchNorm1d', 'Dropout', 'Linear']
    assert m.layers[0].in_features == 3 + 2 + 2 and m.layers[0].bias is None
    m.eval()
    xc, xn = torch.tensor([[1, 2], [0, 1]]), torch.randn(2, 2)
    emb = torch.cat([m.embeds[0](xc[:, 0]), m.embeds[1](xc[:, 1])], 1)
    torch.testing.assert_close(m(xc, xn), m.layers(torch.cat([emb, m.bn_cont(xn)], 1)))


def test_split_rows():
    trn, val = split_rows(100, 0.2, seed=3)
    assert len(val) == 20 and not set(trn) & set(val) and sorted(trn + val) == list(range(100))
    assert split_rows(100, 0.2, seed=3) == (trn, val) and split_rows(100, 0.2, seed=4) != (trn, val)


def test_learner_metrics_export_and_predict(tmp_path):
    cols = make_cols(120)
    dls = tabular_dls(cols, ['cat'], ['x', 'z'], 'y', seed=0, bs=16)
    torch.manual_seed(0)
    learn = tabular_learner(dls, layers=[16, 8], device='cpu', progress=False)
    learn.fit_one_cycle(3, 1e-2)
    p, t, losses = learn.get_preds(with_loss=True)
    assert math.isclose(float(learn.history[-1]['loss']), losses.mean().item(), abs_tol=1e-3)     # targets are batch[2], weights len(batch[0])
    assert math.isclose(float(learn.history[-1]['accuracy']), (p.argmax(1) == t).double().mean().item(), abs_tol=1e-3)
    learn.export(tmp_path / 't.safetensors')
    l2 = load_learner(tmp_path / 't.safetensors')
    p2, _ = l2.get_preds(dls.valid)
    assert torch.equal(p, p2)
    row = {'cat': 'green', 'x': '0.3', 'z': None}
    assert l2.predict(row)[0] == learn.predict(row)[0] and torch.equal(l2.predict(row)[2], learn.predict(row)[2])
    with pytest.raises(TypeError, match='dict'): learn.predict([1, 2])


def test_regression_target():
    cols = make_cols(80)
    cols['t'] = [f'{float(v or 0) * 2:.3f}' for v in cols['x']]
    dls = tabular_dls(cols, ['cat'], ['z'], 't', y_block='regression', seed=1, bs=16)
    learn = tabular_learner(dls, layers=[8], y_range=(-8, 8), device='cpu', progress=False)
    learn.fit_one_cycle(1, 1e-2)
    assert learn.task == 'regression' and learn.model.layers[-1].high == 8.


def test_read_csv_columns(tmp_path):
    (tmp_path / 'a.csv').write_text('a,b\n1,NA\n.,x\n')
    assert read_csv_columns(tmp_path / 'a.csv') == {'a': ['1', None], 'b': [None, 'x']}
