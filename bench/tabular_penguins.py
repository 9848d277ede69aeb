"""Tabular benchmark: miniai's tabular_learner against scikit-learn's HistGradientBoostingClassifier on the Palmer penguins.

Task: predict each penguin's sex (333 labelled birds of `penguins-raw.csv` from the PyPI package `palmerpenguins`) from
Species, Island, Clutch Completion (categorical) and culmen length/depth, flipper length, body mass, delta 15N, delta 13C
(continuous, the isotopes with missing values). For each seed: one random 80/20 split (`miniai.tabular.split_rows`),
both models trained on the same training rows and scored on the same validation rows.
Ours: `tabular_learner(dls, layers=[200, 100])`, `fit_one_cycle(8, 1e-2)`, batch size 32. Theirs: default
`HistGradientBoostingClassifier(categorical_features=[0, 1, 2], random_state=seed)` on the raw values (NaN for missing).

Run:  .venv/bin/python bench/tabular_penguins.py [--seeds 10] [--epochs 8]
Prints a markdown table: accuracy per seed, then mean and standard deviation.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from miniai.tabular import penguins_path, read_csv_columns, tabular_dls, tabular_learner

CATS = ['Species', 'Island', 'Clutch Completion']
CONTS = ['Culmen Length (mm)', 'Culmen Depth (mm)', 'Flipper Length (mm)', 'Body Mass (g)', 'Delta 15 N (o/oo)', 'Delta 13 C (o/oo)']


def ours(cols, seed, epochs):
    d = tabular_dls(cols, CATS, CONTS, 'Sex', seed=seed, bs=32)
    torch.manual_seed(seed)
    learn = tabular_learner(d, layers=[200, 100], device='cpu', progress=False)
    learn.fit_one_cycle(epochs, 1e-2)
    p, t = learn.get_preds()
    return float((p.argmax(1) == t).double().mean())


def boosting(cols, seed):
    from sklearn.ensemble import HistGradientBoostingClassifier
    d = tabular_dls(cols, CATS, CONTS, 'Sex', seed=seed, bs=32)
    rows = [i for i, v in enumerate(cols['Sex']) if v is not None]
    def X(idx):
        codes = [[d.procs.classes[c].index(cols[c][rows[i]]) if cols[c][rows[i]] in d.procs.classes[c] else -1 for c in CATS] for i in idx]
        nums = [[float(cols[c][rows[i]]) if cols[c][rows[i]] is not None else np.nan for c in CONTS] for i in idx]
        return np.hstack([np.array(codes, dtype=float), np.array(nums)])
    trn, val = d.splits
    y = np.array([cols['Sex'][r] for r in rows])
    clf = HistGradientBoostingClassifier(categorical_features=list(range(len(CATS))), random_state=seed).fit(X(trn), y[trn])
    return float((clf.predict(X(val)) == y[val]).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', type=int, default=10)
    ap.add_argument('--epochs', type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cols = read_csv_columns(penguins_path())
    t0 = time.perf_counter()
    res = [(ours(cols, s, a.epochs), boosting(cols, s)) for s in range(a.seeds)]
    print(f"Palmer penguins, predict sex, {a.seeds} random 80/20 splits\n")
    print('| split seed | tabular_learner | HistGradientBoosting |\n|---|---|---|')
    for s, (x, y) in enumerate(res): print(f'| {s} | {x:.3f} | {y:.3f} |')
    m = [statistics.mean(r[i] for r in res) for i in (0, 1)]
    sd = [statistics.stdev(r[i] for r in res) for i in (0, 1)]
    print(f'| mean +- sd | {m[0]:.3f} +- {sd[0]:.3f} | {m[1]:.3f} +- {sd[1]:.3f} |')
    print(f"\nwall-clock {time.perf_counter() - t0:.0f} s, 1 thread")


if __name__ == '__main__':
    main()
