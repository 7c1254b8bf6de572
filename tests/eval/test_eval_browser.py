"""The static feature browser and markdown report; the page is exercised in real headless Chromium.

The browser test needs Debian's chromium + chromium-driver and the selenium package
(``bash scripts/install_browser.sh``); it is skipped, saying why, when chromium is absent.
The screenshot is written under $MX_ARTIFACTS (default: the test's tmp dir) and its path printed.
"""

import json
import os
import re
import shutil

import pytest
import torch

from matryoshka_ext.eval.browser import browser_html, markdown_report, write_browser
from matryoshka_ext.eval.samples import TopActivationCollector
from matryoshka_ext.sparse import SparseActs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
HEADLESS_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def _samples(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    F, B, T = 24, 4, 20
    tokens = torch.randint(3, 60, (B, T), generator=gen)
    tokens[:, 0] = 2
    keep = tokens != 2
    R = int(keep.sum())
    dense = torch.rand(R, F, generator=gen) * (torch.rand(R, F, generator=gen) < 0.2)
    dense[:, 23] = 0  # a dead latent
    col = TopActivationCollector(F, top_n=4, window=(3, 2))
    col.update(SparseActs.from_dense(dense), tokens, keep.reshape(-1).nonzero().squeeze(1), torch.arange(B))
    vocab = {str(i): f"w{i}" for i in range(60)}
    vocab["7"] = "</script><b>x\n"  # hostile token text must stay inert
    return col.result([8, 16, 24], {"name": "toy <tc>", "vocab": vocab})


def test_markdown_report_lists_groups_and_contexts():
    s = _samples()
    md = markdown_report(s, per_group=2, contexts_per_latent=2, dense_threshold=0.5)
    assert md.count("## Group ") == 3 and "Dense latents" not in md
    f = max(range(8), key=lambda i: (int(s.fire_count[i]), -i))
    assert f"### Latent {f} " in md
    top_id = int(s.window_tokens[f, 0, s.window[0]])
    if top_id != 7:
        assert f"**w{top_id}**" in md
    # with the default 10 % threshold most of these ~20 %-density latents are dense: listed separately
    md10 = markdown_report(s)
    assert "Dense latents in this group" in md10


def test_browser_html_is_self_contained(tmp_path):
    s = _samples()
    page = browser_html(s, max_latents=10)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count("</script>") == 2  # the hostile token did not close the data element
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    data = json.loads(m.group(1))
    assert len(data["latents"]["density"]) == 24 and data["latents"]["has"][23] == 0
    assert 0 < len(data["contexts"]) <= 10 + 3 * 5  # the seeded sample + the report's top latents
    p = write_browser(s, str(tmp_path / "b.html"))
    assert os.path.getsize(p) > 1000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run scripts/install_browser.sh)")
def test_browser_in_headless_chromium(tmp_path):
    try:  # chromium is here, so a missing driver is a set-up error, not a reason to skip
        from selenium import webdriver
    except ImportError:
        pytest.fail("chromium is installed but the selenium package is not: run scripts/install_browser.sh")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    if CHROMEDRIVER is None:
        pytest.fail("chromium is installed but chromedriver is not: run scripts/install_browser.sh")
    s = _samples()
    page = write_browser(s, str(tmp_path / "browser.html"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (*HEADLESS_ARGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not reach for the network
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get("file://" + page)
        wait = WebDriverWait(driver, 20)
        rows = wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "tr.latent-row")))
        embedded = json.loads(driver.find_element(By.ID, "data").get_attribute("textContent"))
        assert len(rows) == sum(embedded["latents"]["has"])  # default view: latents with contexts

        f = int(torch.argmax(s.fire_count))
        driver.find_element(By.CSS_SELECTOR, f'tr.latent-row[data-latent="{f}"]').click()
        ctxs = wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#contexts .context")))
        assert len(ctxs) == int(torch.isfinite(s.top_values[f]).sum())
        assert driver.find_element(By.ID, "detail-title").text.startswith(f"Latent {f}")
        center = ctxs[0].find_element(By.CSS_SELECTOR, ".tok.center")
        expected = s.vocab()[int(s.window_tokens[f, 0, s.window[0]])].replace("\n", "\u23ce")
        assert center.get_attribute("textContent") == expected
        assert "255, 87, 34" in center.get_attribute("style")  # shaded by its activation
        assert not driver.find_elements(By.CSS_SELECTOR, "#contexts b")  # hostile token text stayed text

        Select(driver.find_element(By.ID, "group")).select_by_value("2")  # group 3: latents 16..23
        listed = [int(r.get_attribute("data-latent")) for r in driver.find_elements(By.CSS_SELECTOR, "tr.latent-row")]
        assert listed and all(16 <= i < 24 for i in listed)
        Select(driver.find_element(By.ID, "group")).select_by_value("all")
        driver.find_element(By.CSS_SELECTOR, f'tr.latent-row[data-latent="{f}"]').click()

        out_dir = os.environ.get("MX_ARTIFACTS") or str(tmp_path)
        os.makedirs(out_dir, exist_ok=True)
        shot = os.path.join(out_dir, "feature_browser.png")
        assert driver.save_screenshot(shot)
        print(f"\nfeature browser screenshot: {shot}")
        assert os.path.getsize(shot) > 5000
    finally:
        driver.quit()
