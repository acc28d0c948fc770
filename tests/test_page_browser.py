"""The query page in a real browser: headless Chromium from the system packages (``chromium``,
``chromium-driver``; .ci/run installs them) driven by Selenium, against the real Serve app on
127.0.0.1 with a small bundle built here. A wrong key shows an error and no data; the right
key shows the bundle, and three sequences get the labels, OOD flags and neighbours the API
itself answers (the oracle: the same request over HTTP); an oversized input shows the limit;
the page's requests stay on the service's origin; an evaluation report.html of the same bundle's
store opens from disk without a request; screenshots are kept in
``$GENORAY_TEST_ARTIFACTS`` (else the test's tmp dir) and their paths printed.
Skips when Chromium, chromedriver or selenium is missing."""

import json
import os
import shutil
from pathlib import Path

import pytest
from bundles import make_bundle
from conftest import toy_records

from bench.loadtest import post

pytestmark = [pytest.mark.ray, pytest.mark.slow]
KEY = "page-test-key"
AT, GC = (seq for _, seq in toy_records(2, seed=7))  # fresh draws of the toy classes: in distribution
ODD = "A" * 60  # a k-mer profile unlike any toy record: out of distribution
MAX_SEQUENCES = 4


def _browser():
    """(chromium, chromedriver) paths, or skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless browser test needs Chromium and chromedriver from the system packages "
                    "(apt-get install chromium chromium-driver; .ci/run installs them): "
                    f"chromium {'found' if chromium else 'missing'}, chromedriver {'found' if driver else 'missing'}")
    return chromium, driver


@pytest.fixture
def browser(short_tmp):
    """Chromium with its profile and temp files under a short dir: it keeps a Unix socket there,
    and the 108-byte socket path limit fails under a long TMPDIR."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000",
                f"--user-data-dir={short_tmp / 'profile'}", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver, env={**os.environ, "TMPDIR": str(short_tmp)})  # explicit paths: no download
    d = webdriver.Chrome(service=service, options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    out = Path(os.environ.get("GENORAY_TEST_ARTIFACTS") or tmp_path / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _deploy(root, port):
    from ray import serve

    from genoray.config import ServeConfig
    from genoray.serving.app import build_app
    from genoray.serving.service import hash_key

    cfg = ServeConfig(root=str(root), port=port, key_hashes=(hash_key(KEY),), poll_s=0.5, num_cpus=0.1,
                      ingress="proxy", min_replicas=1, max_replicas=1, limits={"max_sequences": MAX_SEQUENCES})
    serve.run(build_app(cfg), name="page", route_prefix="/page")


def test_query_page_in_chromium(browser, artifacts, serve_port, tmp_path):
    from ray import serve
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = tmp_path / "root"
    version = make_bundle(tmp_path / "w", root, seed=0)
    _deploy(root, serve_port)
    try:
        origin = f"http://127.0.0.1:{serve_port}"
        query = {"sequences": [GC, AT, ODD], "ids": ["q_gc", "q_at", "q_odd"], "k": 5}
        status, body, _ = post(serve_port, "/page/v1/predict", query, KEY)
        assert status == 200, body
        oracle = json.loads(body)["predictions"]
        assert [p["label"] for p in oracle[:2]] == ["gc", "at"]
        assert [p["ood"] for p in oracle] == [False, False, True]

        wait = WebDriverWait(browser, 30)
        browser.get(f"{origin}/page/ui")
        find = lambda css: browser.find_element(By.CSS_SELECTOR, css)
        fasta = "".join(f">{i} from the test\n{s[:30]}\n{s[30:]}\n" for i, s in zip(query["ids"], query["sequences"]))

        # a wrong key: a visible error, no bundle and no predictions
        find("#key").send_keys("wrong-key")
        find("#sequences").send_keys(fasta)
        find("#k").clear()
        find("#k").send_keys("5")
        find("#predict").click()
        wait.until(lambda d: find("#error").is_displayed())
        assert "401" in find("#error").text and "API key" in find("#error").text
        assert not find("#bundle").is_displayed()
        assert browser.find_elements(By.CSS_SELECTOR, ".prediction") == []
        browser.save_screenshot(str(artifacts / "page-wrong-key.png"))

        # the right key: the bundle panel, then three predictions equal to the API's
        find("#key").clear()
        find("#key").send_keys(KEY)
        find("#connect").click()
        wait.until(lambda d: find("#bundle").is_displayed())
        assert not find("#error").is_displayed()
        facts = find("#bundle-facts").text
        assert version in facts and "gc" in facts and "recall@10" in facts
        assert browser.execute_script("return sessionStorage.getItem('genoray.apiKey')") == KEY
        assert browser.execute_script("return localStorage.length + document.cookie.length") == 0
        # the same records from a FASTA file (the file input; a drop on the text box reads it the same way)
        find("#sequences").clear()
        (tmp_path / "query.fa").write_text(fasta)
        find("#file").send_keys(str(tmp_path / "query.fa"))
        wait.until(lambda d: find("#sequences").get_attribute("value") == fasta)
        find("#predict").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".prediction")) == 3)
        cards = browser.find_elements(By.CSS_SELECTOR, ".prediction")
        for card, want in zip(cards, oracle):
            assert card.find_element(By.CSS_SELECTOR, ".label").text == want["label"]
            badge = card.find_element(By.CSS_SELECTOR, ".badge")
            assert badge.get_attribute("data-ood") == str(want["ood"]).lower()
            assert badge.text == ("OOD" if want["ood"] else "in distribution")
            rows = card.find_elements(By.CSS_SELECTOR, "table.neighbours tr")[1:]
            got = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]
            assert got == [[n["seq_id"], n["label"], f"{n['similarity']:.3f}"] for n in want["neighbours"]]
            assert f"OOD score {want['ood_score']:.3f}" in card.text
            assert len(card.find_elements(By.CSS_SELECTOR, ".bars .bar")) == len(want["probabilities"])
        assert [c.find_element(By.TAG_NAME, "h3").text.split(":")[0] for c in cards] == query["ids"]
        assert f"Answered by bundle {version}" in find("#answered").text
        # the replica's drift window counted the oracle's 3 predictions and the page's 3
        wait.until(lambda d: "over the last 6 of 1000 predictions" in find("#drift-facts").text,
                   f"drift panel: {find('#drift-facts').text!r}")
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1280, min(4000, height + 140))  # the whole page in the screenshot
        browser.save_screenshot(str(artifacts / "page-predictions.png"))
        browser.set_window_size(1280, 1000)

        # over the service's limit: a visible limit message, nothing sent
        find("#sequences").clear()
        find("#sequences").send_keys("\n".join([GC] * (MAX_SEQUENCES + 1)))
        find("#predict").click()
        wait.until(lambda d: find("#error").is_displayed())
        assert f"at most {MAX_SEQUENCES} sequences" in find("#error").text
        assert browser.find_elements(By.CSS_SELECTOR, ".prediction") == []
        assert find("#answered").text == ""
        browser.save_screenshot(str(artifacts / "page-limit.png"))

        # same origin only, and nothing the CSP had to block
        urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(f"{origin}/page/") for u in urls), urls
        assert {u.split("/page/")[1] for u in urls} >= {"ui/page.js", "ui/page.css", "v1/info", "v1/predict"}
        blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
        assert blocked == []
    finally:
        serve.delete("page")

    # an evaluation report of the same store, index and head, opened from disk: it draws
    # without a single request (every chart is inline SVG)
    from genoray.evaluation import evaluation_report
    from genoray.evaluation.html import write_evaluation

    work = tmp_path / "w"
    html = write_evaluation(evaluation_report(work / "store", work / "index", work / "head", curves=True),
                            tmp_path / "report")
    browser.get(html.as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("genoray evaluation")
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure svg")) == 5
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    browser.save_screenshot(str(artifacts / "report.png"))
    print(f"\nscreenshots: {artifacts / 'page-predictions.png'}, {artifacts / 'page-wrong-key.png'}, "
          f"{artifacts / 'page-limit.png'}, {artifacts / 'report.png'}")
