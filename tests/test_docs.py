"""The documentation site (`make docs`) in a real browser, and the package's links pointing only at what exists.

The site is built by this test with `mkdocs build --strict` into a temporary folder (about 30-45 s on a 2-core CPU
when nothing is cached, ~10 s when mkdocs-jupyter's cache in `.cache/` is warm), or taken from `$MINIAI_DOCS_SITE`
(a folder `make docs` built, e.g. `MINIAI_DOCS_SITE=_site`). It is served from 127.0.0.1 and loaded in headless
Chromium driven by selenium through Debian's `chromium-driver`; every other host resolves to nothing, so the test also
shows that the pages need no network. Without mkdocs (`pip install -e .[docs]`), selenium or Chromium, the browser
tests skip and say which is missing.
"""
import functools, http.server, importlib.util, json, os, re, subprocess, sys, threading, tomllib
from html.parser import HTMLParser
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urldefrag, urljoin
from urllib.request import urlopen

import pytest

from browser import chromedriver, chromium, why_no_browser

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'miniai'


# ---- links in the package: no docstring or project URL names a site that does not exist -------------------------

def _module_files(): return sorted(p for p in PKG.rglob('*.py') if '__pycache__' not in p.parts)

def test_no_link_to_missing_docs_site():
    "nbdev writes `Docs: <doc_host>/<page>` into every module docstring when pyproject names a docs site; none exists."
    bad = [str(p.relative_to(ROOT)) for p in _module_files()
           if re.search(r'^Docs: https?://', p.read_text(encoding='utf-8'), re.M) or 'miniai-dev' in p.read_text(encoding='utf-8')]
    assert not bad, f"module docstrings link to a site that does not exist: {bad}"

def test_project_urls_and_readme_nb():
    cfg = tomllib.loads((ROOT/'pyproject.toml').read_text(encoding='utf-8'))
    urls = cfg['project'].get('urls', {})
    assert not any('miniai-dev' in u for u in urls.values()), f"project URLs name a repository/site that does not exist: {urls}"
    nbdev = cfg['tool']['nbdev']
    readme_nb = nbdev.get('readme_nb', 'index.ipynb')   # nbdev's default
    assert (ROOT/nbdev.get('nbs_path', 'nbs')/readme_nb).exists(), f"readme_nb = {readme_nb!r} is not a notebook in nbs/"


# ---- the site in a browser ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "A built site: `$MINIAI_DOCS_SITE`, or one built now from this checkout."
    if (why := why_no_browser()): pytest.skip(why)
    if env := os.environ.get('MINIAI_DOCS_SITE'):
        path = Path(env)
        if not (path/'index.html').exists(): pytest.fail(f"MINIAI_DOCS_SITE={env} has no index.html: run `make docs`")
        return path
    if importlib.util.find_spec('mkdocs') is None: pytest.skip('mkdocs is not installed (pip install -e .[docs]); `make docs` installs it')
    out = tmp_path_factory.mktemp('site')
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
    r = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--quiet', '--site-dir', str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"mkdocs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

@pytest.fixture(scope='module')
def server(site):
    "The site on an HTTP server at 127.0.0.1 (search needs http, not file://)."
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(site)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()
    httpd.server_close()

@pytest.fixture(scope='module')
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium()
    for a in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--no-first-run', '--window-size=1280,1000',
              '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'):   # no host but this machine: offline
        opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(chromedriver()), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def _wait(d, cond, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(d, timeout).until(cond)

def _js_errors(d):
    return [e['message'] for e in d.get_log('browser') if e['level'] == 'SEVERE']

def _open(d, url):
    d.get_log('browser')   # drop earlier pages' messages
    d.get(url)
    _wait(d, lambda d: d.execute_script('return document.readyState') == 'complete')


def _lessons(site): return sorted(p for p in site.glob('*.ipynb') if p.name != 'index.ipynb')

def _n_images(nb):
    "Image outputs committed in notebook `nb`."
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    return sum(any(k.startswith('image/') for k in o.get('data', {})) for c in cells for o in c.get('outputs', []))


def test_index_renders(browser, server):
    from selenium.webdriver.common.by import By
    _open(browser, server)
    assert 'miniai' in browser.title
    h1 = browser.find_element(By.CSS_SELECTOR, 'article h1, .md-content h1')
    assert h1.text.strip() == 'miniai'
    nav = browser.find_element(By.CSS_SELECTOR, 'nav.md-nav--primary').get_attribute('textContent')
    for part in ('Lessons', 'API reference', 'Learner', 'miniai.learner'): assert part in nav, f'{part!r} not in the navigation'
    code = browser.find_elements(By.CSS_SELECTOR, '.jp-CodeCell')
    assert code, 'the index notebook shows no code cell'
    assert not _js_errors(browser)


def test_lesson_with_math_and_plots(browser, server, site):
    "Lesson pages show their committed plots (decoded images) and their math typeset by the local MathJax."
    from selenium.webdriver.common.by import By
    with_math = [p for p in _lessons(site) if '$' in p.read_text(encoding='utf-8')]
    assert with_math, 'no lesson with math'
    _open(browser, server + with_math[0].with_suffix('.html').name)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'mjx-container'))   # MathJax ran, offline
    assert not _js_errors(browser)
    with_plots = [p for p in _lessons(site) if _n_images(p)]
    if not with_plots: pytest.skip('no lesson has committed image outputs')
    nb = max(with_plots, key=_n_images)
    _open(browser, server + nb.with_suffix('.html').name)
    imgs = browser.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output img')
    assert len(imgs) == _n_images(nb), f'{nb.name}: {len(imgs)} images on the page, {_n_images(nb)} in the notebook'
    for img in imgs:
        assert browser.execute_script('return arguments[0].complete && arguments[0].naturalWidth > 0', img), 'an image did not decode'
        assert img.size['width'] > 50
    assert not _js_errors(browser)


def test_api_page(browser, server):
    "The API page of `miniai.learner` documents every name in its `__all__`, with signature and docstring."
    from selenium.webdriver.common.by import By
    import miniai.learner as mod
    _open(browser, server + 'api/miniai.learner.html')
    assert browser.find_element(By.CSS_SELECTOR, '.md-content h1').text.strip() == 'miniai.learner'
    reexported = {a.text for a in browser.find_elements(By.CSS_SELECTOR, '.md-content table a code')}
    for n in mod.__all__:
        el = browser.find_elements(By.ID, f'miniai.learner.{n}')
        assert el or n in reexported, f'no entry for miniai.learner.{n}'
    assert 'Callback' in reexported   # defined in miniai.callback: a link to its page, not a second copy
    learner = browser.find_element(By.ID, 'miniai.learner.Learner').find_element(By.XPATH, '..')
    text = learner.get_attribute('textContent')
    assert 'Learner' in text
    body = browser.find_element(By.CSS_SELECTOR, '.md-content').get_attribute('textContent')
    assert mod.Learner.__doc__.split('`')[0].strip() in body
    assert 'loss_func' in body   # the signature
    assert not _js_errors(browser)


def test_every_module_has_an_api_page(site):
    "One API page per module that defines `__all__`, listing each name (defined there, or re-exported with a link)."
    import ast
    for f in _module_files():
        tree = ast.parse(f.read_text(encoding='utf-8'))
        alls = [n.value for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in n.targets)]
        if not alls or f.name == '_modidx.py': continue
        names = ast.literal_eval(alls[-1])
        rel = f.relative_to(ROOT).with_suffix('')
        mod = '.'.join(rel.parts[:-1] if rel.name == '__init__' else rel.parts)
        page = site/'api'/f'{mod}.html'
        assert page.exists(), f'no API page for {mod}'
        html = page.read_text(encoding='utf-8')
        missing = [n for n in names if f'id="{mod}.{n}"' not in html and f'<code>{n}</code>' not in html]
        assert not missing, f'{mod}: {missing} missing from its API page'


def test_search_finds_learner(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    _open(browser, server)
    box = _wait(browser, lambda d: (e := d.find_element(By.CSS_SELECTOR, 'input.md-search__input')) and e.is_displayed() and e)
    box.click()   # the header's search box (the window is wide enough to show it)
    box.send_keys('Learner')
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '.md-search-result__item'), timeout=30)
    links = [a.get_attribute('href') for a in browser.find_elements(By.CSS_SELECTOR, '.md-search-result__item a')]
    assert any('api/miniai.learner.html' in h for h in links), links[:10]
    assert any(re.search(r'/09_learner\.html', h) for h in links), links[:10]
    box.send_keys(Keys.ESCAPE)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids, self.external = [], set(), []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ('id', 'name'):
            if a.get(k): self.ids.add(a[k])
        for k in ('href', 'src'):
            v = a.get(k)
            if not v or v.startswith(('mailto:', 'javascript:', 'data:')): continue
            if v.startswith(('http://', 'https://', '//')):
                if tag in ('script', 'link', 'img', 'iframe'): self.external.append(v)   # something the page loads
                continue
            self.links.append((tag, v))


def test_no_broken_internal_link(server):
    "Crawl every page from the index: each internal link and asset answers 200, each #fragment exists on its page."
    seen, pages, queue, broken = set(), {}, [server], []
    while queue:
        url = queue.pop()
        if url in seen: continue
        seen.add(url)
        try:
            with urlopen(url, timeout=10) as r: body, ctype = r.read(), r.headers.get('Content-Type', '')
        except HTTPError as e:
            broken.append(f'{url}: {e.code}')
            continue
        if 'text/html' not in ctype: continue
        p = _Links()
        p.feed(body.decode('utf-8', 'replace'))
        pages[url] = p
        for tag, v in p.links:
            target = urljoin(url, v)
            if not target.startswith(server): continue
            page_url = urldefrag(target)[0]
            if page_url not in seen: queue.append(page_url)
    assert len(pages) > 20, f'only {len(pages)} pages reachable from the index'
    for url, p in pages.items():
        for tag, v in p.links:
            target = urljoin(url, v)
            page_url, frag = urldefrag(target)
            if frag and page_url in pages and frag not in pages[page_url].ids and not frag.startswith('__'):
                broken.append(f'{url}: #{frag} not on {page_url}')
    assert not broken, f'{len(broken)} broken internal links: {broken[:20]}'
    loads = sorted({v for p in pages.values() for v in p.external})
    assert not loads, f'pages load resources from other hosts (the site must work offline): {loads}'
