"""Open a real feature browser page (``interp``'s OUT/<name>/browser.html) in headless Chromium and click through it.

Checks what tests/eval/test_eval_browser.py checks on a synthetic page, on a full-size one: the overview renders
(group summary and absorption tables), an absorber link opens its latent, the latent's histogram, DLA tokens and
contexts render, its parent link navigates, and a screenshot is written. Prints the load and click timings.
Needs chromium + chromium-driver + selenium (scripts/install_browser.sh).

    .venv/bin/python scripts/check_browser_page.py runs/interp/matryoshka/browser.html [--shot page.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    p = argparse.ArgumentParser()
    p.add_argument("page")
    p.add_argument("--shot", default=None, help="screenshot path (default: beside the page)")
    args = p.parse_args()
    page = os.path.abspath(args.page)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        print("chromium / chromedriver missing: bash scripts/install_browser.sh", file=sys.stderr)
        return 2
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="mx-browser-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                "--disable-background-networking", "--window-size=1280,900", f"--user-data-dir={profile}"):  # fmt: skip
        opts.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        t = time.perf_counter()
        driver.get("file://" + page)
        wait = WebDriverWait(driver, 120)
        rows = wait.until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "tr.latent-row")))
        tables = driver.find_elements(By.CSS_SELECTOR, "#overview table.summary")
        print(f"loaded in {time.perf_counter() - t:.1f} s: {len(rows)} latent rows, {len(tables)} overview tables "
              f"({os.path.getsize(page) / 2**20:.1f} MB)")  # fmt: skip
        links = driver.find_elements(By.CSS_SELECTOR, "#overview a.lat")
        target = links[0] if links else rows[0]
        latent = target.get_attribute("data-latent")
        t = time.perf_counter()
        target.click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), f"Latent {latent} "))
        bars = driver.find_elements(By.CSS_SELECTOR, "#hist .histogram .bar")
        live = [b for b in bars if "empty" not in (b.get_attribute("class") or "")]
        dla = driver.find_elements(By.CSS_SELECTOR, "#dla table.dla-pos td.tok")
        ctx = driver.find_elements(By.CSS_SELECTOR, "#contexts .context")
        quant = driver.find_elements(By.CSS_SELECTOR, "#quant .context")
        print(f"latent {latent} ({'overview link' if links else 'first row'}) in {time.perf_counter() - t:.2f} s: "
              f"{len(live)}/{len(bars)} histogram bars, DLA top tokens {[d.text for d in dla[:5]]}, "
              f"{len(ctx)} top contexts, {len(quant)} quantile contexts")  # fmt: skip
        ok = bool(live) and bool(dla) and bool(ctx)
        parents = driver.find_elements(By.CSS_SELECTOR, "#nav a.lat.parent")
        if parents:
            par = parents[0].get_attribute("data-latent")
            parents[0].click()
            wait.until(EC.text_to_be_present_in_element((By.ID, "detail-title"), f"Latent {par} "))
            kids = driver.find_elements(By.CSS_SELECTOR, "#nav ul.children a.lat")
            print(f"parent link -> latent {par}: {len(kids)} children listed")
            ok = ok and bool(kids)
        shot = args.shot or os.path.join(os.path.dirname(page), "browser_check.png")
        driver.save_screenshot(shot)
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print("OK" if ok else "FAILED: an element did not render")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
