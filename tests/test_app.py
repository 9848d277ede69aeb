"""Browser test of miniai.app: an exported classifier served by Gradio on 127.0.0.1, driven by headless Chromium (Debian's
`chromium` and `chromium-driver` through selenium), which uploads an image and reads the predicted label from the page.

Needs gradio (`pip install -e .[app]`), selenium (`.[docs]`) and Chromium with its driver (`make browser`); each missing
piece skips the test and says which. The browser resolves no host but 127.0.0.1, so the test is offline. Set
MINIAI_APP_SCREENSHOT=file.png to keep a screenshot of the page with its prediction.
"""
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from browser import chromedriver, chromium, why_no_browser

ROOT = Path(__file__).resolve().parents[1]


def _why_not():
    if importlib.util.find_spec('gradio') is None: return 'gradio is not installed (pip install -e .[app]; `make app` installs it)'
    return why_no_browser()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def served(tmp_path_factory):
    "An export (a Fashion-MNIST classifier with an untrained head: the test compares the page with learn.predict), a PNG, and the app serving it."
    if (why := _why_not()): pytest.skip(why)
    from PIL import Image
    from miniai.datasets import load_fashion_mnist, dataset_tensors, FMNIST_CLASSES
    from miniai.vision import image_dls, vision_learner
    from miniai.export import load_learner
    from miniai.app import to_model_image
    tmp = tmp_path_factory.mktemp('app')
    xv, yv = dataset_tensors(load_fashion_mnist()['test'])
    dls = image_dls((xv[:64], yv[:64]), (xv[:32], yv[:32]), bs=32, vocab=FMNIST_CLASSES)
    torch.manual_seed(0)
    learn = vision_learner(dls, 'fmnist_classifier', lin_ftrs=[32], device='cpu', progress=False)
    learn.export(tmp / 'model.safetensors')
    Image.fromarray(xv[0].numpy()).resize((112, 112)).save(tmp / 'upload.png')
    loaded = load_learner(tmp / 'model.safetensors')
    expected = loaded.predict(to_model_image(loaded, Image.open(tmp / 'upload.png')))[0]
    port = _free_port()
    env = {**os.environ, 'GRADIO_ANALYTICS_ENABLED': 'False', 'PYTHONPATH': os.pathsep.join([str(ROOT), *sys.path[1:]]),
           'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen([sys.executable, '-m', 'miniai.app', '--model', str(tmp / 'model.safetensors'), '--port', str(port)],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}/'
    try:
        for _ in range(240):
            if proc.poll() is not None: pytest.fail(f"the app exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200: break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f"the app did not answer at {url} within 2 minutes")
        yield url, tmp / 'upload.png', expected
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill()


def test_upload_and_read_the_prediction(served):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, png, expected = served
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium()
    for a in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
              '--no-first-run', '--window-size=1280,900', '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(chromedriver()), options=opts)
    try:
        d.set_page_load_timeout(60)
        d.get(url)
        wait = WebDriverWait(d, 60)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'input[type=file]'))[0]
        upload.send_keys(str(png))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'img[src*="upload"], img[src^="blob:"], img[src*="/file="], img[src*="gradio_api"]'))
        submit = wait.until(lambda d: [b for b in d.find_elements(By.TAG_NAME, 'button') if b.text.strip() == 'Submit'])[0]
        submit.click()
        label = wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, '[data-testid="label-output-value"]') if e.text.strip()])[0]
        if shot := os.environ.get('MINIAI_APP_SCREENSHOT'): d.save_screenshot(shot)
        assert label.strip() == expected
        body = d.find_element(By.TAG_NAME, 'body').text
        assert '%' in body   # the probabilities are shown too
    finally: d.quit()
