"""Run lesson notebooks and store their outputs in them, so the docs site shows plots and tables without running anything.

    MPLBACKEND=Agg OMP_NUM_THREADS=1 python docs/save_outputs.py nbs/01_matmul.ipynb nbs/05_datasets.ipynb ...

Each notebook runs as `nbdev-test` runs it (same shell, cells flagged with `tst_flags` such as `#| slow` or `#| gpu`
skipped), with matplotlib figures as plain PNG instead of execnb's default double-resolution "retina" PNG. Then the
outputs are made small and stable: PNGs re-encoded with at most 256 colours when that is smaller (plots and 28x28
image grids lose nothing visible), warnings on stderr and progress-bar widgets dropped, very long text cut, execution
counts removed; `nbdev-clean` (run afterwards) strips the remaining metadata and keeps the outputs. A notebook that
fails keeps its previous contents. Execution is on the CPU, so the outputs are the CPU's.
"""
import base64, io, re, sys, time
from functools import partial
from pathlib import Path

MAX_TEXT = 4000   # characters of one text output kept (the rest elided)
_re_warn = re.compile(r'^.*\b\w*Warning: .*\n(?:[ \t]+.*\n?)*', re.M)   # a warning line and its indented source lines

def _small_png(b64):
    "`b64` PNG re-encoded with a 256-colour palette when that is smaller; otherwise unchanged."
    from PIL import Image
    raw = base64.b64decode(b64)
    im = Image.open(io.BytesIO(raw))
    q = im.convert('RGBA').quantize(256, method=Image.Quantize.FASTOCTREE) if im.mode in ('RGBA', 'LA', 'P') \
        else im.convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    q.save(buf, format='PNG', optimize=True)
    return base64.b64encode(buf.getvalue()).decode() if buf.tell() < len(raw) else b64

def _text(v): return ''.join(v) if isinstance(v, list) else v

def _cut(s):
    if len(s) <= MAX_TEXT: return s
    return s[:MAX_TEXT//2] + f'\n... ({len(s) - MAX_TEXT} characters elided) ...\n' + s[-MAX_TEXT//2:]

def _tidy(o):
    "One output made small and free of noise, or None to drop it."
    if o.get('output_type') == 'stream':
        text = _text(o.get('text', ''))
        if o.get('name') == 'stderr': text = _re_warn.sub('', text)   # warnings from the libraries of the day
        o['text'] = _cut(text)
        return o if text.strip() else None
    data = o.get('data', {})
    if 'application/vnd.jupyter.widget-view+json' in data: return None
    html = _text(data.get('text/html', ''))
    if '<progress' in html and 'text/plain' in data and not _text(data['text/plain']).strip(): return None
    if 'image/png' in data: data['image/png'] = _small_png(_text(data['image/png']).strip())
    for k in ('text/plain', 'text/html'):
        if k in data: data[k] = _cut(_text(data[k]))
    if 'execution_count' in o: o['execution_count'] = None
    o.get('metadata', {}).pop('execution', None)
    return o

def tidy_nb(fn):
    "Apply `_tidy` to every output of the notebook at `fn` in place."
    from fastcore.nbio import read_nb, write_nb
    nb = read_nb(fn)
    for c in nb.cells:
        if c.cell_type != 'code': continue
        c.outputs = [o for o in (_tidy(dict(o)) for o in c.get('outputs', [])) if o is not None]
        c.execution_count = None
        c.metadata.pop('execution', None)
    write_nb(nb, fn)

def save_outputs(fn):
    import nbdev.test
    from execnb.shell import CaptureShell
    from nbdev.config import get_config
    nbdev.test.CaptureShell = partial(CaptureShell, mpl_format='png')   # 1x PNG, not "retina"
    fn = Path(fn).resolve()
    before = fn.read_text(encoding='utf-8')
    cfg = get_config(fn.parent)
    t = time.time()
    ok, _ = nbdev.test.test_nb(fn, skip_flags=cfg.tst_flags.split(), basepath=cfg.config_path, save=True)
    if not ok:
        fn.write_text(before, encoding='utf-8')
        return False, time.time() - t
    tidy_nb(fn)
    return True, time.time() - t

if __name__ == '__main__':
    failed = []
    for fn in sys.argv[1:]:
        ok, secs = save_outputs(fn)
        print(f'{fn}: {"ok" if ok else "FAILED (left unchanged)"} in {secs:.0f}s, {Path(fn).stat().st_size/1e3:.0f} kB', flush=True)
        if not ok: failed.append(fn)
    sys.exit(1 if failed else 0)
