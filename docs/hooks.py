"""MkDocs hooks for miniai's site: the navigation and one API page per module, made at build time.

The lessons are the notebooks in `nbs/` (rendered by mkdocs-jupyter with their committed outputs, never executed
here). The API reference has one page per module of the `miniai` package that defines `__all__`, listing exactly
those names: a name defined in the module is rendered by mkdocstrings (signature, docstring, source); a name it
re-exports links to the page of the module that defines it. Both lists are read at build time (the package with
griffe's static analysis, nothing is imported), so a new notebook or module appears without editing this file.
"""
import json
import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
PKG = 'miniai'
SKIP = {'miniai._modidx'}  # nbdev's symbol index, not an API
_re_cell = re.compile(r'^# %% (\S+\.ipynb)', re.M)

def _title(nb):
    "The notebook's title: the text of its first `# ` heading, else its file stem."
    try: cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    except (OSError, ValueError, KeyError): return nb.stem
    for c in cells:
        if c.get('cell_type') != 'markdown': continue
        for line in ''.join(c.get('source', '')).splitlines():
            if line.startswith('# '): return line[2:].strip().replace('`', '')
    return nb.stem

def _label(nb):
    "Navigation label `NN · Title` for a lesson notebook."
    num = nb.stem.split('_', 1)[0]
    return f'{num} · {_title(nb)}' if re.match(r'^\d', num) else _title(nb)

def _walk(mod):
    yield mod
    for sub in sorted(mod.modules.values(), key=lambda m: m.path): yield from _walk(sub)

def _modules():
    "`[(dotted name, griffe module)]` for every module of the package that defines `__all__`."
    pkg = griffe.load(PKG, search_paths=[str(ROOT)], resolve_aliases=True, resolve_external=False)
    return [(m.path, m) for m in _walk(pkg) if m.exports is not None and m.path not in SKIP]

def _lessons_of(mod):
    "The notebooks whose cells make up `mod`, from the `# %% ../nbs/NN.ipynb` markers nbdev writes."
    try: src = Path(mod.filepath).read_text(encoding='utf-8')
    except (OSError, TypeError): return []
    return list(dict.fromkeys(Path(p).name for p in _re_cell.findall(src)))

def _api_page(name, mod, nbs_dir):
    "Markdown for the API page of module `name`."
    doc = mod.docstring.value.split('\n\nDocs:')[0].strip() if mod.docstring else ''
    lines = [f'# `{name}`', '']
    if doc: lines += [doc, '']
    lessons = [nb for nb in _lessons_of(mod) if (nbs_dir/nb).exists()]
    if lessons:
        links = ', '.join(f'[{_label(nbs_dir/nb)}](../{nb})' for nb in lessons)
        lines += [f'Lesson{"s" if len(lessons) > 1 else ""}: {links}', '']
    own, reexp = [], []
    for n in map(str, mod.exports):
        obj = mod.members.get(n)
        if obj is None: continue
        if obj.is_alias:
            target = obj.target_path
            (reexp if target.startswith(PKG + '.') and target.rsplit('.', 1)[0] != name else own).append((n, target))
        else: own.append((n, obj.path))
    if not own and not reexp: lines += ['This module exports no public names: its helpers serve the modules that import it.', '']
    if reexp:
        lines += ['## Re-exported names', '', '| name | defined in |', '|---|---|']
        lines += [f'| [`{n}`][{t}] | [`{t.rsplit(".", 1)[0]}`]({t.rsplit(".", 1)[0]}.md) |' for n, t in reexp]
        lines += ['']
    for n, _ in own: lines += [f'::: {name}.{n}', '']
    return '\n'.join(lines)

def _lesson_nbs(nbs_dir): return sorted(p for p in nbs_dir.glob('*.ipynb') if p.name != 'index.ipynb')

def on_config(config):
    nbs_dir = Path(config['docs_dir'])
    nav = [{'Home': 'index.ipynb'} if (nbs_dir/'index.ipynb').exists() else None,
           {'Lessons': [{_label(nb): nb.name} for nb in _lesson_nbs(nbs_dir)]},
           {'API reference': [{name: f'api/{name}.md'} for name, _ in _modules()]}]
    config['nav'] = [o for o in nav if o]
    return config

_api_of = {}   # lesson notebook name -> the modules it exports into

def on_files(files, config):
    nbs_dir = Path(config['docs_dir'])
    _api_of.clear()
    for name, mod in _modules():
        for nb in _lessons_of(mod): _api_of.setdefault(nb, []).append(name)
        page = _api_page(name, mod, nbs_dir)
        files.append(File.generated(config, f'api/{name}.md', content=page))
    files.append(File.generated(config, 'assets/extra.css', abs_src_path=str(Path(__file__).with_name('extra.css'))))
    return files

# Notebook pages: mkdocs-jupyter inlines the same ~0.6 MB of notebook CSS into every lesson page and points MathJax
# at an empty URL. Each distinct inline stylesheet is written once under assets/notebook/ and linked instead, and the
# math is typeset by a local MathJax 3 (from the `django-static-mathjax` package, which has no dependencies) so the
# site needs no network; without that package the TeX stays as written.
_re_style = re.compile(r'<style type="text/css">(.*?)</style>', re.S)
_re_mathjax2 = re.compile(r'<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->', re.S)
_MATHJAX_JS = 'assets/mathjax/tex-svg.js'
_MATHJAX_CFG = ("<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], "
                "displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']], processEscapes: true}, svg: {fontCache: 'global'}};</script>")
_css = {}

def _mathjax_src():
    try: import mathjax
    except ImportError: return None
    p = Path(mathjax.__file__).parent/'static'/'mathjax'/'es5'/'tex-svg.js'
    return p if p.exists() else None

def _rel_root(page):
    depth = page.file.dest_uri.count('/')
    return '../'*depth

_re_heading = re.compile(r'<h([1-6]) id="([^"]+)">(.*?)</h\1>', re.S)

def on_page_content(html, page, config, files):
    "A notebook page's table of contents from the ids its headings really have (mkdocs-jupyter's own slugs drop `code`)."
    if not page.file.src_uri.endswith('.ipynb'): return html
    from mkdocs.structure.toc import get_toc
    root = {'level': 0, 'children': []}
    stack = [root]
    for level, hid, inner in _re_heading.findall(html):
        name = re.sub(r'<[^>]+>', '', inner.replace('¶', '')).strip()
        tok = {'level': int(level), 'id': hid, 'name': name, 'html': name, 'data-toc-label': name, 'children': []}
        while stack[-1]['level'] >= tok['level']: stack.pop()
        stack[-1]['children'].append(tok)
        stack.append(tok)
    page.toc = get_toc(root['children'])
    # under the title: the notebook itself (mkdocs-jupyter copies it beside the page) and the API pages it writes
    root_rel = _rel_root(page)
    nb = Path(page.file.src_uri).name
    links = [f'Notebook: <a href="{nb}" download><code>{nb}</code></a>']
    if mods := _api_of.get(nb):
        links.append('API: ' + ', '.join(f'<a href="{root_rel}api/{m}.html"><code>{m}</code></a>' for m in mods))
    bar = f'<p class="miniai-nb-links">{" · ".join(links)}</p>'
    return re.sub(r'(</h1>)', lambda m: m.group(1) + bar, html, count=1)

def on_post_page(output, page, config):
    if not page.file.src_uri.endswith('.ipynb'): return output
    root = _rel_root(page)
    def link(m):
        css = m.group(1)
        if len(css) < 20_000: return m.group(0)  # small page-specific styles stay inline
        import hashlib
        name = f'assets/notebook/{hashlib.sha1(css.encode()).hexdigest()[:12]}.css'
        _css[name] = css
        return f'<link rel="stylesheet" href="{root}{name}">'
    output = _re_style.sub(link, output)
    mj = f'{_MATHJAX_CFG}<script defer src="{root}{_MATHJAX_JS}"></script>' if _mathjax_src() else ''
    return _re_mathjax2.sub(lambda m: mj, output, count=1)

def on_post_build(config):
    site = Path(config['site_dir'])
    for name, css in _css.items():
        (site/name).parent.mkdir(parents=True, exist_ok=True)
        (site/name).write_text(css, encoding='utf-8')
    src = _mathjax_src()
    if src:
        (site/_MATHJAX_JS).parent.mkdir(parents=True, exist_ok=True)
        (site/_MATHJAX_JS).write_bytes(src.read_bytes())
