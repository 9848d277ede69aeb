"""Train the small colour feature network that miniai ships for style transfer and NCAs (`miniai.style.style_feature_net`).

No ImageNet weights can be downloaded here, so the network learns colour and texture features from what scikit-image
bundles: it classifies random patches (side 24-64 pixels, resized to 32x32, random flips) by which of 11 images they come
from (the colour photographs astronaut, chelsea, coffee, rocket, immunohistochemistry, hubble_deep_field, retina,
colorwheel, and the grey textures brick, grass, gravel). AdamW, one-cycle, `--steps` steps of `--bs` patches.
Accuracy is reported on 2,048 fresh patches (from the same images: a check that it learned, not a generalisation test).
The weights are written as float16 safetensors to `--out` (default: the file miniai ships).

Run (2-core CPU, one thread: 12.4 min for 500 steps, 91.6%):  .venv/bin/python bench/train_style_features.py
Measured figures and their commands: bench/results_later.md
"""
import argparse
import time

import torch
import torch.nn.functional as F

from miniai.style import style_feature_net, STYLE_FEATURES
from miniai.utils import atomic_write

NAMES = ['astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry', 'hubble_deep_field', 'retina', 'colorwheel',
         'brick', 'grass', 'gravel']


def images():
    from skimage import data
    res = []
    for nm in NAMES:
        a = torch.from_numpy(getattr(data, nm)().copy())
        if a.ndim == 2: a = a[..., None].expand(-1, -1, 3)
        res.append(a[..., :3].permute(2, 0, 1).float() / 127.5 - 1)
    return res


def patches(ims, n, g):
    "n random patches (side 24-64, resized to 32) with random horizontal flips, and their image labels."
    ys = torch.randint(0, len(ims), (n,), generator=g)
    out = []
    for y in ys.tolist():
        im = ims[y]
        s = int(torch.randint(24, 65, (1,), generator=g))
        t = int(torch.randint(0, im.shape[1] - s + 1, (1,), generator=g)); l = int(torch.randint(0, im.shape[2] - s + 1, (1,), generator=g))
        p = F.interpolate(im[None, :, t:t + s, l:l + s], size=(32, 32), mode='bilinear', align_corners=False, antialias=True)[0]
        if torch.rand(1, generator=g) < 0.5: p = p.flip(-1)
        out.append(p)
    return torch.stack(out), ys


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=500); p.add_argument('--bs', type=int, default=64); p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--out', default=str(STYLE_FEATURES)); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    ims = images()
    model = style_feature_net(len(ims))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps)
    t = time.perf_counter()
    for step in range(a.steps):
        x, y = patches(ims, a.bs, g)
        loss = F.cross_entropy(model(x), y)
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()
        if step % 100 == 0: print(f'step {step}: loss {loss.item():.3f}', flush=True)
    model.eval()
    with torch.no_grad():
        x, y = patches(ims, 2048, torch.Generator().manual_seed(a.seed + 1))
        acc = (model(x).argmax(1) == y).float().mean().item()
    print(f'{a.steps} steps in {(time.perf_counter() - t) / 60:.1f} min; accuracy on 2,048 fresh patches {acc:.3f}', flush=True)
    from safetensors.torch import save
    atomic_write(a.out, save({k: v.half().contiguous() for k, v in model.state_dict().items()},
                             metadata={'images': ','.join(NAMES), 'steps': str(a.steps), 'accuracy': f'{acc:.4f}'}))
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
