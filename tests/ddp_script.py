"""A tiny data-parallel training run used by tests/test_accel.py.

Run on 2 CPU processes:  torchrun --nproc_per_node 2 tests/ddp_script.py OUT_DIR [GLOBAL_BS]
or on one:               python tests/ddp_script.py OUT_DIR [GLOBAL_BS]
Each process trains a small float64 MLP with `Learner` + `AccelerateCB` (our `Adam`) on the same fixed
data, taking GLOBAL_BS/world_size samples per step, and saves its final weights to
OUT_DIR/rank{rank}_world{world}.pt.
"""
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from miniai.accel import AccelerateCB
from miniai.datasets import DataLoaders
from miniai.learner import Learner
from miniai.sgd import Adam


def main(out, global_bs=16, n=128, epochs=2):
    torch.set_num_threads(1)
    world, rank = int(os.environ.get('WORLD_SIZE', 1)), int(os.environ.get('RANK', 0))
    if global_bs % world: raise ValueError(f"global batch size {global_bs} is not divisible by {world} processes")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1*torch.randn(n, 1, generator=g, dtype=torch.float64)
    bs = global_bs // world
    # no shuffling: rank r gets batches r, r+world, ... so one global step covers the samples of one
    # single-process batch of size global_bs
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=bs), DataLoader(TensorDataset(x, y), batch_size=bs))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1)).double()
    learn = Learner(model, dls, F.mse_loss, lr=1e-2, cbs=[AccelerateCB(mixed_precision='no', cpu=True)], opt_func=Adam)
    learn.fit(epochs)
    torch.save(learn.model.state_dict(), os.path.join(out, f'rank{rank}_world{world}.pt'))


if __name__ == '__main__':
    main(sys.argv[1], *map(int, sys.argv[2:3]))
