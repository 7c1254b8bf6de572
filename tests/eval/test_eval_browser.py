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
    tokens[:, 2::3] = 8  # "<!-- x" sits in every window
    keep = tokens != 2
    R = int(keep.sum())
    dense = torch.rand(R, F, generator=gen) * (torch.rand(R, F, generator=gen) < 0.2)
    dense[:, 23] = 0  # a dead latent
    col = TopActivationCollector(F, top_n=4, window=(3, 2))
    col.update(SparseActs.from_dense(dense), tokens, keep.reshape(-1).nonzero().squeeze(1), torch.arange(B))
    vocab = {str(i): f"w{i}" for i in range(60)}
    vocab["7"] = "</script><b>x\n"  # hostile token text must stay inert
    vocab["8"] = "<!-- x"  # real vocabularies hold this (Gemma's does); the embedded JSON must still parse
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
    assert "<!-- x" in data["vocab"].values() and "<!--" not in page
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


def _paged(seed: int = 0):
    """Samples of 24 latents (groups 8/16/24) with every page extra: histogram, DLA, quantile contexts, hierarchy,
    an absorption table; built by the real functions from one dense activation matrix."""
    from matryoshka_ext.eval.absorption import AbsorptionResult, LetterResult, PrefixAbsorption
    from matryoshka_ext.eval.browser import PageExtras
    from matryoshka_ext.eval.hierarchy import build_hierarchy
    from matryoshka_ext.eval.pages import ActivationRecord, histograms, quantile_contexts

    gen = torch.Generator().manual_seed(seed)
    F, B, T = 24, 6, 24
    tokens = torch.randint(3, 60, (B, T), generator=gen)
    tokens[:, 0] = 2
    keep = tokens != 2
    R = int(keep.sum())
    dense = torch.rand(R, F, generator=gen) * (torch.rand(R, F, generator=gen) < 0.25)
    dense[:, 12] = dense[:, 3] * 0.5  # a planted child: latent 12 fires exactly where 3 does
    dense[:, 23] = 0
    acts = SparseActs.from_dense(dense)
    flat = keep.reshape(-1).nonzero().squeeze(1)
    col = TopActivationCollector(F, top_n=4, window=(3, 2))
    col.update(acts, tokens, flat, torch.arange(B))
    vocab = {str(i): f"w{i}" for i in range(60)}
    s = col.result([8, 16, 24], {"name": "paged", "vocab": vocab})
    pos = acts.values > 0
    rec = ActivationRecord(acts.row_ids()[pos], acts.indices[pos], acts.values[pos], flat, tokens, F)
    hist, mx = histograms(rec, 12)
    dla = (
        torch.randint(3, 60, (F, 5), generator=gen),
        torch.rand(F, 5, generator=gen),
        torch.randint(3, 60, (F, 5), generator=gen),
        -torch.rand(F, 5, generator=gen),
    )
    h = build_hierarchy(rec.rows, rec.latents, R, [8, 16, 24], torch.randn(F, 8, generator=gen))
    letter = LetterResult("a", [3], 0.9, 10, 0.2, 0.2, 0.1, absorbers=[(12, 1)], examples=[("apple", 12)])
    ab = AbsorptionResult(
        "paged", 100, {"a": 0.95}, [PrefixAbsorption(1, 8, [letter]), PrefixAbsorption(2, 24, [letter])]
    )
    extras = PageExtras(
        hist=hist,
        hist_max=mx,
        dla=dla,
        quantiles=quantile_contexts(rec, range(F), 4, 1, (3, 2)),
        hierarchy=h,
        absorption=ab.to_dict(),
    )
    return s, extras, h, hist


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run scripts/install_browser.sh)")
def test_latent_pages_in_headless_chromium(tmp_path):
    """Click a latent: its histogram, DLA tokens, quantile contexts and parent/children render; the links work."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    s, extras, h, hist = _paged()
    assert int(h.parent[12]) == 3 and abs(float(h.p_parent[12]) - 1.0) < 1e-6
    page = write_browser(s, str(tmp_path / "pages.html"), extras=extras)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (*HEADLESS_ARGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get("file://" + page)
        wait = WebDriverWait(driver, 20)
        # the overview: one row per group, and the absorption tables with latent links
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#overview table.summary")))
        tables = driver.find_elements(By.CSS_SELECTOR, "#overview table.summary")
        assert len(tables) == 3 and len(tables[0].find_elements(By.TAG_NAME, "tr")) == 1 + 3
        driver.find_element(By.CSS_SELECTOR, '#overview a.lat[data-latent="12"]').click()  # an absorber link
        wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), "Latent 12 "))

        bars = driver.find_elements(By.CSS_SELECTOR, "#hist .histogram .bar")
        assert len(bars) == hist.shape[1]
        nonempty = [b for b in bars if "empty" not in b.get_attribute("class")]
        assert len(nonempty) == int((hist[12] > 0).sum()) and all(b.size["height"] >= 1 for b in nonempty)
        pos = driver.find_elements(By.CSS_SELECTOR, "#dla table.dla-pos td.tok")
        assert [p.get_attribute("textContent") for p in pos] == [f"w{i}" for i in extras.dla[0][12].tolist()]
        assert driver.find_elements(By.CSS_SELECTOR, "#quant .context")
        assert driver.find_elements(By.CSS_SELECTOR, "#contexts .context")

        parent = driver.find_element(By.CSS_SELECTOR, "#nav a.lat.parent")
        assert parent.text == "3"
        parent.click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), "Latent 3 "))
        kids = [
            int(a.get_attribute("data-latent")) for a in driver.find_elements(By.CSS_SELECTOR, "#nav ul.children a.lat")
        ]
        assert kids == h.children(3)[:20] and 12 in kids
        driver.find_element(By.CSS_SELECTOR, '#nav ul.children a.lat[data-latent="12"]').click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), "Latent 12 "))
        driver.find_element(By.ID, "summary-btn").click()
        assert driver.find_element(By.ID, "overview").is_displayed()

        out_dir = os.environ.get("MX_ARTIFACTS") or str(tmp_path)
        os.makedirs(out_dir, exist_ok=True)
        driver.find_element(By.CSS_SELECTOR, '#overview a.lat[data-latent="12"]').click()
        shot = os.path.join(out_dir, "latent_page.png")
        assert driver.save_screenshot(shot)
        print(f"\nlatent page screenshot: {shot}")
    finally:
        driver.quit()
