"""The explorer page (``GET /`` of ``pinsage serve``) in a real browser: the distribution's Chromium
driven by Playwright, against a real ``pinsage serve`` process on the artifacts of a tiny
MovieLens-100K fit.  Screenshots of every view go to a temporary folder (and to
``$PINSAGE_EXPLORER_SHOTS`` when set).  Skipped with the reason when Playwright, Chromium or the
dataset is missing (CI installs Chromium: ``.ci/run``)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.app.servers import free_port, wait_until_serving
from tests.conftest import data_folder

PROJECT = Path(__file__).resolve().parents[2]
TOKEN = "browser-test-token"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

pytestmark = [pytest.mark.dataset, pytest.mark.slow]  # a fit + predict + browser: ~60 s on 2 cores

TINY_ML = [
    "--config", str(PROJECT / "configs" / "movielens-100k.yaml"),
    "--data.features", "[log_degree, categories, year]", "--data.batch_size=256", "--data.num_neighbors=10",
    "--data.num_walks=20", "--data.num_easy_negatives=40", "--data.max_hard_negatives=1", "--data.num_workers=0",
    "--model.hidden_channels=32", "--model.out_channels=16", "--model.lr=0.01",
    "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
]


def _chromium() -> str:
    found = shutil.which("chromium") or next((p for p in CHROMIUM_PATHS if Path(p).is_file()), None)
    if not found:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    return found


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def ml_artifacts(browser, tmp_path_factory):
    """A tiny MovieLens-100K fit (30 batches) and its predict artifacts."""
    from app.cli import main

    folder = data_folder("movielens-100k")
    root = tmp_path_factory.mktemp("explorer-ml")
    args = TINY_ML + ["--data.root", str(folder.parent), "--data.cache_dir", str(root / "cache")]
    assert main(["fit", *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=30",
                 "--trainer.limit_val_batches=0", "--trainer.default_root_dir", str(root / "run")]) == 0
    out = root / "art" / "movielens-100k"
    assert main(["predict", *args, "--ckpt_path", str(root / "run" / "checkpoints" / "last.ckpt"),
                 "--artifacts.output_dir", str(out), "--artifacts.index", "exact",
                 "--artifacts.evaluate", "false"]) == 0
    return out


@pytest.fixture(scope="module")
def server(ml_artifacts, tmp_path_factory):
    """``pinsage serve`` as its own process (the console script's module), with the write token."""

    port = free_port()
    log = tmp_path_factory.mktemp("explorer-log") / "items.jsonl"
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PINSAGE_SERVE_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--artifacts", str(ml_artifacts),
                             "--port", str(port), "--log", str(log)], env=env, cwd=str(PROJECT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, url, seconds=120)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explorer-shots")
    yield folder
    dest = os.environ.get("PINSAGE_EXPLORER_SHOTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        for p in sorted(folder.glob("*.png")):
            shutil.copy(p, Path(dest) / p.name)


def shown(page, hash_: str) -> None:
    """Wait until the page has drawn the view of ``hash_`` (explorer.js sets body[data-shown]).  Waits
    are selectors, never ``wait_for_function``: its polling evaluates strings, which the page's
    Content-Security-Policy (no eval) refuses, as it should."""
    page.wait_for_selector(f"body[data-shown='{hash_}']", state="attached")


def test_predict_writes_categories_and_year(ml_artifacts):
    import csv

    with open(ml_artifacts / "items.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    sw = rows["50"]
    assert sw["title"] == "Star Wars (1977)" and sw["year"] == "1977"
    assert sw["categories"].split("|") == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]


def test_users_npz_holds_each_history_in_time_order(ml_artifacts):
    """The user card's "recent history" is the tail of users.npz: predict writes it in time order."""
    import pandas as pd

    raw = pd.read_csv(data_folder("movielens-100k") / "raw" / "u.data", sep="\t", names=["u", "i", "r", "t"])
    users = np.load(ml_artifacts / "users.npz")
    ids = pd.read_csv(ml_artifacts / "items.csv", dtype=str)["id"].to_numpy()
    for u in (0, 10, 500):
        raw_id = int(users["user_ids"][u])
        hist = ids[users["items"][users["ptr"][u]:users["ptr"][u + 1]]].astype(int)
        times = raw[raw.u == raw_id].set_index("i").t
        t = times.loc[hist].to_numpy()
        assert len(hist) == len(times) and (np.diff(t) >= 0).all(), raw_id


def test_explorer_in_a_browser(browser, server, ml_artifacts, shots):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, dialogs, console = [], [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)

    # the page: loads, shows the catalogue size
    page.goto(server + "/")
    page.wait_for_selector("#status:has-text('1682 items')")
    load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    page.screenshot(path=str(shots / "01-home.png"))

    # search "Star Wars": the film comes first, as a prefix match
    page.fill("#q", "Star Wars")
    page.press("#q", "Enter")
    page.wait_for_selector("li.result")
    results = page.locator("li.result a.item")
    assert results.first.text_content() == "Star Wars (1977)"
    page.screenshot(path=str(shots / "02-search-star-wars.png"))

    # its card: similar items with titles, the importance neighbourhood, the categories
    results.first.click()
    page.wait_for_selector("tr.similar")
    assert page.locator("#item-title").text_content() == "Star Wars (1977)"
    sim = page.locator("tr.similar a.item")
    assert sim.count() == 10
    titles = sim.all_text_contents()
    assert all(re.search(r"\(\d{4}\)$", t) for t in titles), titles  # real MovieLens titles
    assert "Star Wars (1977)" not in titles
    assert page.locator("tr.neighbour a.item").count() >= 5
    assert {"Action", "Sci-Fi"} <= set(page.locator("#item-meta .chip").all_text_contents())
    page.screenshot(path=str(shots / "03-item-star-wars.png"), full_page=True)

    # a user's card: recent history and recommendations
    users = np.load(ml_artifacts / "users.npz")
    page.fill("#user-id", str(users["user_ids"][0]))
    page.press("#user-id", "Enter")
    page.wait_for_selector("tr.rec")
    assert page.locator("li.history a.item").count() == 20
    assert page.locator("tr.rec a.item").count() == 10
    assert all(page.locator("tr.rec a.item").all_text_contents())
    page.screenshot(path=str(shots / "04-user.png"), full_page=True)

    # add an item with the token (a hostile title): it lands near what it was co-engaged with
    evil = "<script>alert(1)</script> A Space Opera"
    page.goto(server + "/#/add")
    page.fill("#token", TOKEN)
    page.fill("input[name=id]", "new-space-opera")
    page.fill("input[name=title]", evil)
    page.fill("input[name=categories]", "Action, Adventure, Sci-Fi")
    page.fill("input[name=year]", "2026")
    page.fill("input[name=co_engaged_items]", "50, 172, 181")
    page.screenshot(path=str(shots / "05-add-form.png"))
    page.click("#add-form button")
    shown(page, "#/item/new-space-opera")
    page.wait_for_selector("tr.similar")
    assert page.locator("#item-title").text_content() == evil  # rendered as text
    assert page.locator("#item-meta .tag.new").count() == 1
    assert page.locator("tr.neighbour").count() > 0
    page.screenshot(path=str(shots / "06-added-item.png"), full_page=True)
    neighbours = page.locator("tr.similar a.item").evaluate_all("els => els.map(e => e.dataset.id)")

    # ... and is found on its neighbours' cards
    found_on = []
    for nid in neighbours:
        page.goto(f"{server}/#/item/{nid}")
        shown(page, f"#/item/{nid}")
        if page.locator("tr.similar a.item[data-id='new-space-opera']").count():
            found_on.append(nid)
            if len(found_on) == 1:
                page.screenshot(path=str(shots / "07-neighbour-card-with-new-item.png"), full_page=True)
    assert found_on, f"the new item is on none of its {len(neighbours)} neighbours' top-10"
    page.goto(f"{server}/#/item/{found_on[0]}")
    shown(page, f"#/item/{found_on[0]}")
    link = page.locator("tr.similar a.item[data-id='new-space-opera']")
    assert link.text_content() == evil

    # search finds it, by its (escaped) title
    page.goto(server + "/#/search/space%20opera")
    page.wait_for_selector("li.result")
    assert page.locator("li.result a.item").first.text_content() == evil
    page.screenshot(path=str(shots / "08-search-new-item.png"))

    # the map: clicking a point opens that item's card
    page.goto(server + "/#/map")
    page.wait_for_selector("#map-info:has-text('PCA')")
    page.screenshot(path=str(shots / "09-map.png"))
    box = page.locator("#map").bounding_box()
    # the most isolated of the first 300 points (a click on overlapping points opens the nearest one)
    x, y, pid = page.evaluate("""() => { const c = document.getElementById('map');
        const xy = mapData.points.map((p) => mapXY(c, p)); let best = 0, gap = -1;
        for (let i = 0; i < Math.min(300, xy.length); i++) {
          let d = Infinity;
          for (let j = 0; j < xy.length; j++) if (j !== i)
            d = Math.min(d, Math.hypot(xy[i][0] - xy[j][0], xy[i][1] - xy[j][1]));
          if (d > gap) { gap = d; best = i; } }
        return [xy[best][0], xy[best][1], mapData.points[best][0]]; }""")
    page.mouse.click(box["x"] + x * box["width"] / 900, box["y"] + y * box["height"] / 640)
    page.wait_for_selector("tr.similar")
    assert page.evaluate("location.hash") == f"#/item/{pid}"

    # errors show as the API's one line
    page.goto(server + "/#/item/no-such-item")
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#error").text_content() == ("item 'no-such-item' is not in the catalogue "
                                                     "(1683 items; ids as in items.csv)")
    page.screenshot(path=str(shots / "10-error.png"))

    # the hostile title never ran, never became an element; no CSP violation, no failed load but the 404s
    assert dialogs == [] and errors == []
    assert [c for c in console if "404" not in c] == [], console
    assert page.evaluate("document.querySelectorAll('script').length") == 1
    print(json.dumps({"page_load_ms": round(load_ms, 1), "found_on_neighbours": len(found_on),
                      "of": len(neighbours)}))
    page.close()


def test_offline_copy_of_pinsage_report(browser, ml_artifacts, tmp_path, shots):
    """`pinsage report` writes the same page with a snapshot: it opens from the file system."""
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (tools extra)")
    from app.cli import main

    out = tmp_path / "report"
    assert main(["report", str(ml_artifacts), "--out", str(out), "--map", "pca", "--max-items", "2000",
                 "--queries", "1", "--quiet"]) == 0
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((out / "explorer.html").as_uri())
    page.wait_for_selector("#status:has-text('offline copy')")
    assert page.locator("#nav-add").is_hidden() and page.locator("#token").is_hidden()
    page.fill("#q", "star wars")
    page.press("#q", "Enter")
    shown(page, "#/search/star%20wars")
    page.locator("li.result a.item").first.click()
    shown(page, "#/item/50")
    assert page.locator("#item-title").text_content() == "Star Wars (1977)"
    assert page.locator("tr.similar a.item").count() == 10 and page.locator("tr.neighbour").count() >= 5
    page.screenshot(path=str(shots / "11-offline-report-item.png"), full_page=True)
    page.goto((out / "explorer.html").as_uri() + "#/map")
    page.wait_for_selector("#map-info:has-text('PCA of 1682')")
    page.goto((out / "explorer.html").as_uri() + "#/item/no-such-item")
    page.wait_for_selector("#error:not([hidden])")
    assert "not in the offline snapshot" in page.locator("#error").text_content()
    assert errors == []
    page.close()
