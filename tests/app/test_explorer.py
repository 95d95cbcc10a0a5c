"""The explorer's endpoints (``app/explorer.py``) and its title search; the page in a real browser is
``test_explorer_browser.py``."""

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from app.explorer import STATIC, TitleSearch

PROJECT = Path(__file__).resolve().parents[2]
TOKEN = "explorer-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ----------------------------------------------------------------------------------------------
# title search (pure)
# ----------------------------------------------------------------------------------------------
def test_title_search_prefix_first_then_substring_case_insensitive():
    titles = ["The Empire Strikes Back", "Star Wars", "star trek", "Return of the Jedi", "Wars of Stars", "",
              "A STAR is born", "Lone Star"]
    s = TitleSearch(titles)
    # prefixes alphabetically, then substrings in catalogue order
    assert s.search("star", 10) == [(2, "prefix"), (1, "prefix"), (4, "substring"), (6, "substring"),
                                    (7, "substring")]
    assert s.search("  STAR W ", 10) == [(1, "prefix")]
    assert s.search("star", 2) == [(2, "prefix"), (1, "prefix")]  # stops at the limit
    assert s.search("star", 3) == [(2, "prefix"), (1, "prefix"), (4, "substring")]
    assert s.search("", 10) == [] and s.search("zzz", 10) == []
    assert s.search("s", 100).count((1, "prefix")) == 1  # a title with many matches comes once


def test_title_search_odd_titles_and_inserted_items():
    titles = ["İstanbul", "a\x00b", "line\nbreak", "Ünïcode Straße", "x"]
    s = TitleSearch(titles)
    assert s.search("straße", 5) == [(3, "substring")]
    assert s.search("a b", 5) == [(1, "prefix")]  # \x00 in a title is a space
    assert s.search("b", 5) == [(0, "substring"), (1, "substring"), (2, "substring")]
    assert s.search("ünï", 5) == [(3, "prefix")]
    assert s.search("x", 5) == [(4, "prefix")]  # the last title
    assert s.search("bul", 5) == [(0, "substring")]  # a title whose lowercase is longer ("i̇")
    grown = titles + ["Xanadu", "the x-files"]
    s.sync(grown)
    assert s.search("x", 5) == [(4, "prefix"), (5, "prefix"), (6, "substring")]
    s.sync(grown + ["xx"])
    assert s.search("xx", 5) == [(7, "prefix")]


def test_title_search_is_fast_on_a_million_titles():
    titles = [f"Movie {i} part {i % 97} ({1900 + i % 120})" for i in range(1_000_000)]
    titles[999_999] = "Zebra Crossing"
    t0 = time.perf_counter()
    s = TitleSearch(titles)
    build = time.perf_counter() - t0
    worst = 0.0
    for q in ("movie 12", "zebra", "crossing", "no such title at all", "(1999)", "part 5 "):
        t0 = time.perf_counter()
        hits = s.search(q, 21)
        worst = max(worst, time.perf_counter() - t0)
        assert bool(hits) == (q != "no such title at all"), q
    assert s.search("zebra", 21) == [(999_999, "prefix")] and s.search("crossing", 21) == [(999_999, "substring")]
    assert build < 30 and worst < 0.5, (build, worst)  # 2 shared cores: see benchmarks/EXPLORER.md


# ----------------------------------------------------------------------------------------------
# the endpoints, on the tiny synthetic run
# ----------------------------------------------------------------------------------------------
pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="httpx is not installed (dev extra)")


@pytest.fixture()
def client(artifacts, tmp_path):
    from fastapi.testclient import TestClient

    from app.serve import create_app

    with TestClient(create_app(artifacts, token=TOKEN, log_path=tmp_path / "items.jsonl")) as c:
        yield c


def _items(artifacts):
    import csv

    with open(artifacts / "items.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_page_and_its_files_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "pinsage explorer" in r.text and "static/explorer.js" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"] and r.headers["cache-control"] == "no-cache"
    for name, kind in (("explorer.js", "text/javascript"), ("explorer.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.content == (STATIC / name).read_bytes()
    assert client.get("/static/nope.js").status_code == 404
    # no CDN: nothing the page loads comes from another host
    html = (STATIC / "explorer.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_page_never_puts_data_into_html():
    """Titles are user content (POST /items): the page must only ever set text, never parse HTML."""
    js = (STATIC / "explorer.js").read_text()
    code = re.sub(r"//[^\n]*", "", js)  # comments may name what is forbidden
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, sink


def test_search_endpoint(client, artifacts):
    rows = _items(artifacts)
    r = client.get("/search", params={"q": "ITEM 1", "limit": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == "ITEM 1" and body["more"] is True and len(body["items"]) == 5
    want = sorted((x for x in rows if x["title"].startswith("item 1")), key=lambda x: x["title"])
    assert [it["id"] for it in body["items"]] == [x["id"] for x in want][:5]
    assert all(it["match"] == "prefix" and it["title"].lower().startswith("item 1") for it in body["items"])
    # an id: the item itself first
    r = client.get("/search", params={"q": rows[7]["id"]}).json()
    assert r["items"][0] == {"id": rows[7]["id"], "title": rows[7]["title"], "match": "id"}
    # substring
    r = client.get("/search", params={"q": "(community 3)", "limit": 200}).json()
    want = [x["id"] for x in rows if "(community 3)" in x["title"]]
    assert [it["id"] for it in r["items"]] == want[:200] and {it["match"] for it in r["items"]} == {"substring"}
    for bad in ({"q": ""}, {"q": "x", "limit": 0}, {"q": "x", "limit": 10_000}, {"q": "x" * 201}, {}):
        r = client.get("/search", params=bad)
        assert r.status_code == 422 and r.json()["error"], bad


def test_item_card_shows_the_stored_neighbourhood_and_degree(client, artifacts):
    rows = _items(artifacts)
    nb = np.load(artifacts / "neighbourhoods.npz")
    g = np.load(artifacts / "walk_graph.npz")
    i = 11
    card = client.get(f"/items/{rows[i]['id']}").json()
    assert card["id"] == rows[i]["id"] and card["index"] == i and card["title"] == rows[i]["title"]
    assert card["inserted"] is False and card["degree"] == int(g["item_ptr"][i + 1] - g["item_ptr"][i])
    s, e = nb["ptr"][i], nb["ptr"][i + 1]
    want = sorted(zip(nb["weights"][s:e].tolist(), nb["items"][s:e].tolist()), key=lambda t: -t[0])
    assert [n["id"] for n in card["neighbourhood"]] == [rows[j]["id"] for _, j in want]
    assert [n["weight"] for n in card["neighbourhood"]] == pytest.approx([w for w, _ in want])
    title = {x["id"]: x["title"] for x in rows}
    assert card["neighbourhood"] and all(n["title"] == title[n["id"]] for n in card["neighbourhood"])
    r = client.get("/items/no-such-item")
    assert r.status_code == 404 and r.json() == {
        "error": f"item 'no-such-item' is not in the catalogue ({len(rows)} items; ids as in items.csv)"}


def test_user_card_is_the_log_tail_most_recent_first(client, artifacts):
    rows = _items(artifacts)
    users = np.load(artifacts / "users.npz")
    u = 5
    hist = users["items"][users["ptr"][u]:users["ptr"][u + 1]]
    card = client.get(f"/users/{users['user_ids'][u]}", params={"n": 3}).json()
    assert card["history_size"] == len(hist)
    assert [it["id"] for it in card["recent"]] == [rows[j]["id"] for j in hist[::-1][:3]]
    assert card["recent"][0]["title"] == rows[hist[-1]]["title"]
    assert client.get("/users/nobody").status_code == 404
    assert client.get(f"/users/{users['user_ids'][u]}", params={"n": 0}).status_code == 422


def test_map_is_the_reports_projection_of_a_seeded_sample(client, artifacts):
    from app.projection import project_2d

    emb = np.load(artifacts / "embeddings.npy")
    m = client.get("/map", params={"n": 50}).json()
    assert m["method"] == "PCA" and m["total"] == emb.shape[0] and m["sample"] == 50 == len(m["points"])
    ids = [p[0] for p in m["points"]]
    rows = {x["id"]: int(x["index"]) for x in _items(artifacts)}
    xy = np.array([[p[2], p[3]] for p in m["points"]])
    assert xy.min() == 0.0 and xy.max() == 1.0
    ref, _ = project_2d(emb[[rows[i] for i in ids]], 0, "pca")
    ref = (ref - ref.min(0)) / (ref.max(0) - ref.min(0))
    np.testing.assert_allclose(xy, ref, atol=1e-4)
    assert client.get("/map", params={"n": 50}).json() == m  # cached, the same sample
    assert client.get("/map", params={"method": "nope"}).status_code == 422


def test_an_inserted_item_is_searchable_and_has_a_card(client, artifacts):
    rows = _items(artifacts)
    users = np.load(artifacts / "users.npz")
    F = json.loads((artifacts / "features.json").read_text())["width"]
    engaged = [str(u) for u in users["user_ids"][:4]]
    new = {"id": "new-<b>", "title": "<script>alert(1)</script> Brand New", "features": [0.1] * F,
           "engaged_users": engaged, "co_engaged_items": [rows[3]["id"]]}
    r = client.post("/items", json=new, headers=AUTH)
    assert r.status_code == 201, r.text
    added = r.json()
    card = client.get("/items/new-<b>").json()
    assert card["inserted"] is True and card["title"] == new["title"] and card["index"] == len(rows)
    assert card["degree"] == 4 and len(card["neighbourhood"]) == added["neighbours"] > 0
    assert sum(n["weight"] for n in card["neighbourhood"]) == pytest.approx(1.0, abs=1e-5)
    found = client.get("/search", params={"q": "brand new"}).json()["items"]
    assert found == [{"id": "new-<b>", "title": new["title"], "match": "substring"}]
    assert client.get("/search", params={"q": "<SCRIPT>"}).json()["items"][0]["id"] == "new-<b>"
    assert client.get("/healthz").json()["items"] == len(rows) + 1


def test_reads_need_the_token_off_loopback(artifacts, tmp_path):
    from fastapi.testclient import TestClient

    from app.serve import create_app

    app = create_app(artifacts, token=TOKEN, log_path=tmp_path / "l.jsonl", protect_reads=True)
    with TestClient(app) as c:
        assert c.get("/").status_code == 200  # the page holds no data
        for path in ("/search?q=item", f"/items/{_items(artifacts)[0]['id']}", "/map?n=10"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=AUTH).status_code == 200, path


def test_report_writes_the_page_with_a_snapshot_of_the_same_answers(client, artifacts, tmp_path):
    """`pinsage report` on an artifact folder: explorer.html + static/, whose snapshot holds exactly
    what the live endpoints answer for the same requests."""
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (tools extra)")
    from app.cli import main

    out = tmp_path / "report"
    assert main(["report", str(artifacts), "--out", str(out), "--map", "pca", "--max-items", "60", "--quiet"]) == 0
    for name in ("explorer.html", "static/explorer.js", "static/explorer.css", "static/explorer-snapshot.js"):
        assert (out / name).is_file(), name
    html = (out / "explorer.html").read_text()
    assert '<script src="static/explorer-snapshot.js"></script>' in html
    assert (out / "static" / "explorer.js").read_bytes() == (STATIC / "explorer.js").read_bytes()
    assert "href='explorer.html'" in (out / "index.html").read_text()
    text = (out / "static" / "explorer-snapshot.js").read_text()
    assert text.startswith("window.PINSAGE_SNAPSHOT = ") and text.endswith(";\n")
    snap = json.loads(text[len("window.PINSAGE_SNAPSHOT = "):-2])
    assert snap["map_query"] == "/map?n=60&method=pca" and len(snap["items"]) == 60 and len(snap["users"]) == 20
    answers = snap["answers"]
    assert len(answers) == 2 + 2 * 60 + 2 * 20
    checked = 0
    for path, want in answers.items():
        if path.startswith(("/items/", "/users/", "/map")):
            got = client.get(path).json()
            if path.startswith("/map"):  # the same sample and projection (coordinates to rounding)
                assert [p[:2] + p[4:] for p in got.pop("points")] == [p[:2] + p[4:] for p in want["points"]]
                np.testing.assert_allclose([p[2:4] for p in want.pop("points")],
                                           [p[2:4] for p in client.get(path).json()["points"]], atol=2e-5)
            assert got == want, path
            checked += 1
    assert checked == len(answers) - 1
    # without artifacts or with --no-explorer: no page
    out2 = tmp_path / "r2"
    assert main(["report", str(artifacts), "--out", str(out2), "--map", "pca", "--max-items", "60", "--quiet",
                 "--no-explorer"]) == 0
    assert not (out2 / "explorer.html").exists() and "explorer.html" not in (out2 / "index.html").read_text()


def test_after_a_reload_the_explorer_reads_the_new_state(client, artifacts):
    rows = _items(artifacts)
    F = json.loads((artifacts / "features.json").read_text())["width"]
    assert client.post("/items", json={"id": "kept", "title": "Kept Across Reloads", "features": [0.2] * F},
                       headers=AUTH).status_code == 201
    assert client.post("/admin/reload", json={}, headers=AUTH).status_code == 200  # replays the item log
    assert [it["id"] for it in client.get("/search", params={"q": "kept across"}).json()["items"]] == ["kept"]
    assert client.get("/items/kept").json()["index"] == len(rows)
    m = client.get("/map", params={"n": 20}).json()
    assert m["sample"] == 20 and m["total"] == len(rows) + 1
