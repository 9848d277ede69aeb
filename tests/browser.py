"Finding Debian's Chromium and its chromedriver for the browser tests (test_docs, test_app), and why a test must skip."
import importlib.util
import shutil
from pathlib import Path


def chromium():
    "The Chromium (or Chrome) binary on PATH, or None."
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if p := shutil.which(name): return p


def chromedriver():
    "The chromedriver on PATH or where Debian's chromium-driver puts it, or None."
    return shutil.which('chromedriver') or next((p for p in ('/usr/lib/chromium/chromedriver',) if Path(p).exists()), None)


def why_no_browser():
    "Why selenium cannot drive a browser here (a skip reason), or None."
    if importlib.util.find_spec('selenium') is None: return 'selenium is not installed (pip install -e .[docs])'
    if not chromium(): return 'no Chromium (Debian: apt-get install chromium chromium-driver)'
    if not chromedriver(): return 'no chromedriver (Debian: apt-get install chromium-driver)'
