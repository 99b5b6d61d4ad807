"""The web page in a real headless Chromium (Debian chromium + chromium-driver, via Selenium)
against the real service (shared key, a scripted OpenAI-compatible VLM for Ask). Each test
saves a screenshot of the page under test-results/web/ (LOUPE_TEST_RESULTS to move it)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from encoders.clip.bundled.shapes import make_pairs
from services.cli.launch import ServiceProcess
from services.client import ImageInput, LoupeClient, TextInput
from services.gateway.clients import hash_key, new_key
from tests.fixtures import shapes_eval
from tests.fixtures.rerank_server import ScriptedRerankServer
from tests.fixtures.scripted_vlm import ScriptedVlmServer

pytestmark = pytest.mark.slow
KEY = new_key()  # the desk's: the collection "shapes"
OTHER_KEY = new_key()  # another tenant's: only "globex"
SHOT = Path(__file__).resolve().parents[1] / "fixtures" / "screenshots" / "printer_e42_tray_empty.png"
RESULTS = Path(os.environ.get("LOUPE_TEST_RESULTS", Path(__file__).resolve().parents[2] / "test-results")) / "web"
XSS_NAME = '<img src=x onerror="window.__xss=1">.png'
XSS_TEXT = 'ERR-77 <script>window.__xss=2</script><img src=x onerror="window.__xss=3"> <b>bold</b>'


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    root = tmp_path_factory.mktemp("web")
    pairs = make_pairs(6, seed=4242, size=96, distinct=True)
    with ScriptedVlmServer() as vlm, ScriptedRerankServer() as reranker:
        clients = [
            {
                "id": "desk",
                "keys": [{"sha256": hash_key(KEY)}],
                "rights": ["search", "index", "ask"],
                "collections": ["shapes", shapes_eval.COLLECTION],
            },
            {
                "id": "globex",
                "keys": [{"sha256": hash_key(OTHER_KEY)}],
                "rights": ["search", "index"],
                "collections": ["globex"],
            },
        ]
        (root / "clients.yaml").write_text(yaml.safe_dump({"clients": clients}))
        env = {
            "LOUPE_AUDIO": "false",
            "LOUPE_ASK__BACKEND": "openai",
            "LOUPE_ASK__BASE_URL": vlm.url,
            "LOUPE_ASK__MODEL": "scripted-vlm",
            "LOUPE_RERANK__RERANKERS": json.dumps({"scripted": {"kind": "http", "url": reranker.url}}),
        }
        args = ["--bundled-models", "--data-dir", str(root / "data"), "--clients", str(root / "clients.yaml")]
        with ServiceProcess(args, log_path=root / "serve.log", env=env) as svc:
            with LoupeClient(svc.target, api_key=OTHER_KEY) as other:
                other.index_texts([TextInput("a globex note", id="g1")], collection="globex")
            with LoupeClient(svc.target, api_key=KEY, timeout_s=300) as client:
                images = [
                    ImageInput(_png(img), source=f"shape-{i}.png", metadata={"team": "catalog", "n": i})
                    for i, (img, _) in enumerate(pairs)
                ]
                ids = [pid for pid, _ in client.index_images(images, collection="shapes")]
                client.index_images([ImageInput(_png(pairs[0][0].rotate(90)), source=XSS_NAME)], collection="shapes")
                client.index_texts(
                    [TextInput(XSS_TEXT, id="xss-text", metadata={"note": XSS_TEXT})], collection="shapes"
                )
                shapes_eval.index_catalog(client)  # a calibrated collection: confidences, no match
                client.calibrate(collection=shapes_eval.COLLECTION)
                # A caption the model ranks its own image first for (the page must show the same).
                found = [
                    i
                    for i, (_, caption) in enumerate(pairs)
                    if client.search_text(caption, collection="shapes", limit=1).hits[0].id == ids[i]
                ]
            assert found, "the bundled model found no image by its own caption"
            yield {"svc": svc, "pairs": pairs, "ids": ids, "pick": found[0], "images": images}


@pytest.fixture(scope="module")
def browser(site):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def snap(driver, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(RESULTS / f"{name}.png"))


def use_key(driver, site, key: str = KEY) -> None:
    from selenium.webdriver.common.by import By

    driver.get(site["svc"].web_url)
    box = driver.find_element(By.ID, "key")
    box.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


def test_a_wrong_key_gets_a_clear_message(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site, "not-the-key")
    notice = wait(browser, lambda d: d.find_element(By.ID, "notice").is_displayed() and d.find_element(By.ID, "notice"))
    assert "API key was not accepted" in notice.text and "Enter a valid key" in notice.text
    snap(browser, "wrong-key")


def test_a_text_search_shows_the_expected_image_first_and_times_it(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site)
    caption = site["pairs"][site["pick"]][1]
    browser.get(f"{site['svc'].web_url}?collection=shapes&q={caption.replace(' ', '+')}")
    first = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li.hit"))[0]
    assert first.get_attribute("data-id") == site["ids"][site["pick"]]
    thumb = first.find_element(By.TAG_NAME, "img")
    assert thumb.get_attribute("src").startswith("data:image/jpeg;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", thumb) > 0  # the thumbnail decoded
    assert "shape-" in first.text and "team: catalog" in first.text
    painted = wait(
        browser,
        lambda d: d.execute_script(
            "const m = performance.getEntriesByName('loupe-results-painted'); return m.length ? m[0].startTime : null"
        ),
    )
    print(f"time to first results (navigation start to results painted): {painted:.0f} ms")
    snap(browser, "search")


def test_an_unrelated_query_says_no_match_and_can_show_the_nearest(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site)
    browser.get(f"{site['svc'].web_url}?collection={shapes_eval.COLLECTION}&q=a+golden+retriever+puppy+in+the+snow")
    line = wait(browser, lambda d: "No match" in d.find_element(By.ID, "search-state").text)
    assert line and not browser.find_elements(By.CSS_SELECTOR, "#hits li.hit")
    snap(browser, "no-match")
    browser.find_element(By.ID, "show-all").click()
    hits = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li.hit"))
    assert len(hits) > 1 and all("% likely relevant" in h.text for h in hits)
    # A query about what the collection holds is shown with its confidence, no "No match".
    caption = shapes_eval.catalog()[1]["text"]
    browser.get(f"{site['svc'].web_url}?collection={shapes_eval.COLLECTION}&q={caption.replace(' ', '+')}")
    first = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li.hit"))[0]
    assert "% likely relevant" in first.text and "No match" not in browser.find_element(By.ID, "search-state").text
    snap(browser, "confidence")


def test_the_second_stage_controls_rerank_and_diversify(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site)
    browser.get(f"{site['svc'].web_url}?collection=shapes")
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    browser.find_element(By.ID, "rerank").send_keys("scripted")
    browser.find_element(By.ID, "diverse").click()
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=SEARCH_MODE_KEYWORD]").click()
    browser.find_element(By.ID, "q").send_keys("ERR-77 bold")
    browser.find_element(By.CSS_SELECTOR, "#search-form button[type=submit]").click()
    line = wait(browser, lambda d: "rerank:" in d.find_element(By.ID, "search-state").text)
    text = browser.find_element(By.ID, "search-state").text
    assert line and "rerank: reranked by scripted" in text and "diversity: mmr lambda 0.7" in text
    first = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li.hit"))[0]
    assert first.get_attribute("data-id") == "xss-text" and "rerank " in first.text
    snap(browser, "rerank")


def test_a_pasted_image_finds_itself_first(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site)
    browser.get(f"{site['svc'].web_url}?collection=shapes")
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    assert browser.execute_script("return document.getElementById('collection').value") == "shapes"
    wanted = 3
    data = base64.b64encode(site["images"][wanted].data).decode()
    browser.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));""",
        data,
    )
    first = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li.hit"))[0]
    assert first.get_attribute("data-id") == site["ids"][wanted]
    snap(browser, "search-by-pasted-image")


def test_an_ask_about_a_screenshot_shows_verdict_citations_and_checks(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site)
    browser.find_element(By.CSS_SELECTOR, ".tab[data-tab=ask]").click()
    browser.find_element(By.ID, "ask-files").send_keys(str(SHOT))
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#uploads li"))
    browser.find_element(By.ID, "question").send_keys("What error does the printer show?")
    browser.find_element(By.CSS_SELECTOR, "#ask-form button[type=submit]").click()
    answer = wait(
        browser,
        lambda d: d.find_element(By.ID, "answer").is_displayed() and d.find_element(By.ID, "answer"),
        timeout=300,
    )
    assert answer.find_element(By.CSS_SELECTOR, ".verdict").text == "answered"
    assert "E-42" in answer.find_element(By.CSS_SELECTOR, ".answer-text").text
    citations = answer.find_elements(By.CSS_SELECTOR, ".citations li")
    assert citations and "[upload-1]" in citations[0].text and "E-42" in citations[0].text
    checks = answer.find_elements(By.CSS_SELECTOR, "table.guards tr")
    assert len(checks) > 3 and any("output.grounding" in row.text for row in checks)
    answer.find_element(By.CSS_SELECTOR, "button[aria-label=Helpful]").click()
    wait(browser, lambda d: "feedback sent" in answer.find_element(By.CSS_SELECTOR, ".feedback").text)
    browser.execute_script("document.getElementById('panel-ask').scrollIntoView()")
    snap(browser, "ask")


def hit_texts(driver) -> dict[str, str]:
    """id -> text of each result card, read in one go (cards are replaced on every search)."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#hits li.hit')].map(h => [h.dataset.id, h.innerText]))"
    )


def search(driver, site, query: str, mode: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{site['svc'].web_url}?collection=shapes")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    driver.find_element(By.CSS_SELECTOR, f"input[name=mode][value={mode}]").click()
    driver.find_element(By.ID, "q").send_keys(query)
    driver.find_element(By.CSS_SELECTOR, "#search-form button").click()


def test_markup_in_names_texts_and_metadata_renders_as_text_and_runs_nothing(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site)
    search(browser, site, "ERR-77", "SEARCH_MODE_KEYWORD")
    texts = wait(browser, lambda d: (t := hit_texts(d)) and "xss-text" in t and t)
    assert XSS_TEXT in texts["xss-text"]  # shown literally, markup and all (text and metadata)
    assert not browser.find_elements(By.CSS_SELECTOR, "#hits script, #hits b, #hits .text img")
    # The image named with markup: its name is shown as text too.
    search(browser, site, site["pairs"][0][1], "SEARCH_MODE_DENSE")
    wait(browser, lambda d: any(XSS_NAME in t for t in hit_texts(d).values()))
    time.sleep(0.5)  # give any injected handler the chance to run
    assert browser.execute_script("return window.__xss === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src=x]")
    snap(browser, "markup-as-text")


def test_the_status_tab_shows_health_models_and_collections(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site)
    browser.find_element(By.CSS_SELECTOR, ".tab[data-tab=status]").click()
    status = wait(
        browser, lambda d: "shapes" in d.find_element(By.ID, "status").text and d.find_element(By.ID, "status")
    )
    assert "SERVING" in status.text and "bundled:tiny-clip" in status.text and "qdrant-edge" in status.text
    assert "8" in [c.text for c in status.find_elements(By.CSS_SELECTOR, "td")]  # 6 + 1 images + 1 text
    browser.set_window_size(390, 844)  # phone width: still readable
    snap(browser, "status-phone")
    browser.set_window_size(1280, 1000)


def test_a_tenant_sees_only_its_own_collections(site, browser) -> None:
    from selenium.webdriver.common.by import By

    use_key(browser, site, OTHER_KEY)
    browser.get(site["svc"].web_url)
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#collection option")]
    assert options == ["globex"]
    browser.find_element(By.CSS_SELECTOR, ".tab[data-tab=status]").click()
    status = wait(
        browser, lambda d: "globex" in d.find_element(By.ID, "status").text and d.find_element(By.ID, "status")
    )
    assert "shapes" not in status.text
