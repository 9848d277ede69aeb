"""Stable Diffusion speed and memory: miniai.sd's from-scratch models against diffusers/transformers at the real v1.5 sizes.

Both sides are built from `miniai.sd.sd15_configs()` (U-Net 860M parameters, text encoder 123M, autoencoder 84M) and get
the same random weights: every tensor is drawn from a generator seeded with a hash of its name (the names are the same on
both sides), so no checkpoint is needed. Each side runs in its own child process, so that its peak memory is its own, and
times, on the same inputs (seeded latents, text states and token ids):

- `unet step`: one denoising step, the U-Net on the classifier-free-guidance batch (2 x 4 x H/8 x W/8 latents, 77 text
  states), the number the issue asks for: seconds per denoising step;
- `text encoder`: CLIP on 2 x 77 tokens (once per image);
- `vae decode`: the autoencoder's decoder on one latent (once per image).

Times: one process holds both sides' models of a part and calls them alternately (the order switching each round, so that
load from other programs hits both alike), `--steps` timed calls each after a warm-up; the table gives medians. Memory: one
process per side and part, which loads the weights and makes one call; on CPU the peak resident set size during the call
(the kernel's high-water mark, reset just before it) and that peak minus the resident set held before it (mostly the
weights): the call's working memory; on CUDA `torch.cuda.max_memory_allocated` and the same minus `memory_allocated` before.
The outputs of the two sides are compared (max |difference|), so the times are for the same computation.

Usage: python bench/sd_speed.py [--device cpu|cuda] [--height 256] [--dtype float32|float16|bfloat16] [--steps 2]
                                [--parts unet,text,vae] [--threads N]
  CPU (the default): 256x256 (32x32 latents), float32; a few minutes on 2 cores, about 8 GB of memory at the peak
  (both U-Nets in the timing process).
  GPU: python bench/sd_speed.py --device cuda --height 512 --dtype float16 --steps 10
"""
import argparse, json, re, statistics, subprocess, sys, tempfile, time, zlib
from pathlib import Path

import torch

PARTS = ('unet', 'text', 'vae')


def rss_kib(field):
    "VmRSS or VmHWM (peak) of this process, in KiB."
    return int(re.search(rf'{field}:\s+(\d+)', Path('/proc/self/status').read_text()).group(1))


def reset_peak():
    "Reset the kernel's resident-set high-water mark of this process (Linux)."
    Path('/proc/self/clear_refs').write_text('5')


def random_state(model, dtype):
    "Deterministic random weights for `model`'s state dict, each tensor seeded by its name: ones/zeros for norms and biases, N(0, 1/fan_in) for weights, N(0, 0.02^2) for embeddings."
    sd = {}
    for name, t in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if name.endswith('bias'): v = torch.zeros(t.shape)
        elif t.ndim == 1: v = torch.ones(t.shape)
        elif 'embedding' in name: v = torch.randn(t.shape, generator=g) * 0.02
        else: v = torch.randn(t.shape, generator=g) / (t[0].numel() ** 0.5)
        sd[name] = v.to(dtype)
    return sd


def build(side, part, dtype, device):
    "The model of `part` on `side` ('ours' or 'diffusers'), with the named random weights, on `device` in `dtype`."
    from miniai.sd import sd15_configs
    cfg = sd15_configs()
    if side == 'ours':
        from miniai.sd import UNet2DConditionModel, CLIPTextModel
        from miniai.vae import AutoencoderKL
        make = {'unet': lambda: UNet2DConditionModel.from_config(cfg['unet']), 'text': lambda: CLIPTextModel.from_config(cfg['text_encoder']),
                'vae': lambda: AutoencoderKL(**cfg['vae'])}[part]
        with torch.device('meta'): m = make()
        m.load_state_dict(random_state(m, dtype), assign=True)
    else:
        import diffusers, transformers
        if part == 'unet':
            with torch.device('meta'): m = diffusers.UNet2DConditionModel(**cfg['unet'])
            m.load_state_dict(random_state(m, dtype), assign=True)
        else:
            m = (transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfg['text_encoder'], bos_token_id=0, eos_token_id=2))
                 if part == 'text' else diffusers.AutoencoderKL(**cfg['vae']))
            m.load_state_dict(random_state(m, dtype))
    return m.to(device=device, dtype=dtype).eval()


def inputs(part, args, dtype, device):
    "Seeded inputs of `part`: the same tensors on both sides."
    g = torch.Generator().manual_seed(0)
    h = args.height // 8
    if part == 'unet': return (torch.randn(2, 4, h, h, generator=g).to(device, dtype), torch.tensor([500, 500], device=device),
                               torch.randn(2, 77, 768, generator=g).to(device, dtype))
    if part == 'text': return (torch.randint(0, 49408, (2, 77), generator=g).to(device),)
    return (torch.randn(1, 4, h, h, generator=g).to(device, dtype) / 0.18215,)


def call(side, part, m, xs):
    "One forward pass of `part` on `side`, returning a tensor."
    if side == 'ours': return m.decode(*xs) if part == 'vae' else m(*xs)
    if part == 'unet': return m(xs[0], xs[1], encoder_hidden_states=xs[2]).sample
    if part == 'text': return m(xs[0]).last_hidden_state
    return m.decode(xs[0]).sample


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def measure_memory(args):
    "Child process: build one side's model of one part and run it once; write its peak memory and output."
    from safetensors.torch import save_file
    device, dtype, part, side = torch.device(args.device), getattr(torch, args.dtype), args.parts, args.worker
    if args.threads: torch.set_num_threads(args.threads)
    m = build(side, part, dtype, device)
    xs = inputs(part, args, dtype, device)
    sync(device)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated() / 2**20
    else: base = rss_kib('VmRSS') / 1024; reset_peak()
    with torch.inference_mode():
        out = call(side, part, m, xs)   # the first call: on CPU a warm-up would leave its memory in the allocator and hide the peak
        sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else rss_kib('VmHWM') / 1024
    save_file({'out': out.float().cpu().contiguous()}, f'{args.out}.safetensors')
    Path(f'{args.out}.json').write_text(json.dumps({'base_mib': base, 'peak_mib': peak}))


def measure_time(args):
    "Child process: build both sides' models of one part and time them on the same inputs, interleaved (the order alternates), after a warm-up each."
    device, dtype, part = torch.device(args.device), getattr(torch, args.dtype), args.parts
    if args.threads: torch.set_num_threads(args.threads)
    ms = {side: build(side, part, dtype, device) for side in ('ours', 'diffusers')}
    xs = inputs(part, args, dtype, device)
    times = {side: [] for side in ms}
    with torch.inference_mode():
        for side in ms: call(side, part, ms[side], xs)
        for r in range(args.steps):
            for side in (('ours', 'diffusers') if r % 2 == 0 else ('diffusers', 'ours')):
                sync(device)
                t = time.perf_counter()
                call(side, part, ms[side], xs)
                sync(device)
                times[side].append(time.perf_counter() - t)
    Path(f'{args.out}.json').write_text(json.dumps({side: statistics.median(v) for side, v in times.items()}))


NAMES = {'unet': 'unet step (CFG batch 2)', 'text': 'text encoder (2x77 tokens)', 'vae': 'vae decode (batch 1)'}

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--height', type=int, default=256, help='image side in pixels (latents: height/8)')
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--steps', type=int, default=2, help='timed calls per part, after one warm-up call')
    p.add_argument('--parts', default=','.join(PARTS))
    p.add_argument('--threads', type=int, default=0, help='torch intra-op threads (0: torch default)')
    p.add_argument('--worker', choices=['ours', 'diffusers', 'time'], help=argparse.SUPPRESS)
    p.add_argument('--out', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.height % 64: sys.exit('--height must be a multiple of 64')
    bad = set(args.parts.split(',')) - set(PARTS)
    if bad: sys.exit(f'unknown --parts {sorted(bad)}; choose from {PARTS}')
    if args.worker: return measure_time(args) if args.worker == 'time' else measure_memory(args)

    from safetensors.torch import load_file
    results, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts.split(','):
            for job in ('ours', 'diffusers', 'time'):   # memory: one process per side (each peak is its own); time: both sides interleaved
                out = f'{tmp}/{job}-{part}'
                cmd = [sys.executable, __file__, '--worker', job, '--out', out, '--device', args.device, '--height', str(args.height),
                       '--dtype', args.dtype, '--steps', str(args.steps), '--parts', part, '--threads', str(args.threads)]
                print(f'{part}: {"timing both" if job == "time" else "memory of " + job} ...', flush=True)
                subprocess.run(cmd, check=True)
                res = json.loads(Path(f'{out}.json').read_text())
                if job == 'time':
                    for side, v in res.items(): results[side][part]['s'] = v
                else:
                    results.setdefault(job, {})[part] = res
                    outs.setdefault(job, {})[part] = load_file(f'{out}.safetensors')['out']
    h = args.height
    print(f'\nStable Diffusion v1.5 sizes, random weights; {args.device} {args.dtype}, {h}x{h} images ({h // 8}x{h // 8} latents), '
          f'torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads; median of {args.steps} interleaved timed calls after a warm-up\n')
    mem = 'CUDA MiB' if args.device.startswith('cuda') else 'RSS MiB'
    print(f"| part | ours s | diffusers s | time ratio | ours peak {mem} | diffusers peak {mem} | peak ratio | "
          f"ours above weights | diffusers above weights | ratio | max abs diff |")
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for part in args.parts.split(','):
        o, d = results['ours'][part], results['diffusers'][part]
        diff = (outs['ours'][part] - outs['diffusers'][part]).abs().max().item()
        oa, da = o['peak_mib'] - o['base_mib'], d['peak_mib'] - d['base_mib']
        print(f"| {NAMES[part]} | {o['s']:.3f} | {d['s']:.3f} | {o['s'] / d['s']:.3f} | {o['peak_mib']:.0f} | {d['peak_mib']:.0f} | "
              f"{o['peak_mib'] / d['peak_mib']:.3f} | {oa:.0f} | {da:.0f} | {oa / da if da > 0 else float('nan'):.3f} | {diff:.2e} |")
    print("\n(time ratio and memory ratios are ours / diffusers; 'above weights' is the part's peak minus the memory held after loading its weights)")


if __name__ == '__main__':
    main()
