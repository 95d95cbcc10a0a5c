"""`pinsage serve` through a real HTTP client against a real uvicorn server on 127.0.0.1, and
`pinsage embed-new`."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (dev extra)")

from app.serve import ItemLog, ServiceState, create_app, default_log_path  # noqa: E402
from tests.app.servers import InProcessServer as Server  # noqa: E402
from tests.app.servers import free_port, wait_until_serving  # noqa: E402

TOKEN = "test-token-123"
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def served(artifacts, tmp_path):
    log = tmp_path / "items.jsonl"
    srv = Server(create_app(artifacts, token=TOKEN, log_path=log))
    client = httpx.Client(base_url=srv.url, timeout=30)
    yield srv, client, log
    client.close()
    srv.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _ids(artifacts):
    import csv

    with open(artifacts / "items.csv", newline="") as f:
        return [r["id"] for r in csv.DictReader(f)]


def _width(artifacts):
    return json.loads((artifacts / "features.json").read_text())["width"]


def test_predict_writes_per_layer_vectors(artifacts):
    m = json.loads((artifacts / "manifest.json").read_text())
    n = m["count"]
    assert m["inductive"]["layers"] == ["layer_0.npy", "layer_1.npy"]
    for name in m["inductive"]["layers"]:
        h = np.load(artifacts / name)
        assert h.shape == (n, m["inductive"]["hidden"]) and h.dtype == np.float32 and np.isfinite(h).all()
    # layer 0 and layer 1 differ (layer 1 mixes in the neighbours)
    assert not np.allclose(np.load(artifacts / "layer_0.npy"), np.load(artifacts / "layer_1.npy"))


def test_similar_user_and_history_endpoints(served, artifacts):
    srv, c, _ = served
    ids = _ids(artifacts)
    r = c.get(f"/items/{ids[3]}/similar", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["item"] == ids[3] and len(body["items"]) == 5
    assert ids[3] not in [it["id"] for it in body["items"]]
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    # the same answer as the CLI's Recommender
    from app.recommend import Recommender

    rec = Recommender(str(artifacts))
    assert [it["id"] for it in body["items"]] == [it["id"] for it in rec.similar_items(ids[3], 5)["items"]]
    users = np.load(artifacts / "users.npz")
    u = str(users["user_ids"][0])
    seen = {ids[i] for i in users["items"][users["ptr"][0]:users["ptr"][1]]}
    r = c.get(f"/users/{u}/recommendations", params={"k": 10})
    assert r.status_code == 200
    got = [it["id"] for it in r.json()["items"]]
    assert len(got) == 10 and not seen & set(got)
    # an unseen user with the same history gets the same list
    r2 = c.post("/recommendations", json={"history": sorted(seen), "k": 10})
    assert r2.status_code == 200 and [it["id"] for it in r2.json()["items"]] == got
    assert c.get("/healthz").json()["items"] == len(ids)
    assert c.get("/openapi.json").json()["paths"]["/items/{item_id}/similar"]


def test_bad_input(served, artifacts):
    srv, c, _ = served
    ids = _ids(artifacts)
    F = _width(artifacts)
    # malformed JSON
    r = c.post("/recommendations", content=b'{"history": [1, 2', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = c.post("/items", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400
    # unknown ids
    assert c.get("/items/no-such-item/similar").status_code == 404
    assert "not in the catalogue" in c.get("/items/no-such-item/similar").json()["error"]
    assert c.get("/users/no-such-user/recommendations").status_code == 404
    assert c.post("/recommendations", json={"history": ["no-such-item"]}).status_code == 422
    # k out of range
    for k in (0, -1, 1001):
        r = c.get(f"/items/{ids[0]}/similar", params={"k": k})
        assert r.status_code == 422 and "k" in r.json()["error"], (k, r.text)
    r = c.get(f"/items/{ids[0]}/similar", params={"k": len(ids)})  # more than the catalogue minus the query
    assert r.status_code == 422 and "k" in r.json()["error"]
    assert c.post("/recommendations", json={"history": [ids[0]], "k": 0}).status_code == 422
    # tokens
    new = {"id": "new-1", "features": [0.0] * F}
    assert c.post("/items", json=new).status_code == 401
    r = c.post("/items", json=new, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.post("/admin/reload", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # feature vector of the wrong width
    r = c.post("/items", json={"id": "new-2", "features": [0.0] * (F + 1)}, headers=AUTH)
    assert r.status_code == 422 and f"expects {F}" in r.json()["error"]
    # neither content nor engagements
    r = c.post("/items", json={"id": "new-3"}, headers=AUTH)
    assert r.status_code == 422 and "neither content" in r.json()["error"]
    # unknown field, unknown co-engaged item
    assert c.post("/items", json={"id": "x", "colour": "red"}, headers=AUTH).status_code == 422
    r = c.post("/items", json={"id": "new-4", "co_engaged_items": ["nope"]}, headers=AUTH)
    assert r.status_code == 422 and "nope" in r.json()["error"]
    # an id that already exists: a catalogue id, then an inserted one
    r = c.post("/items", json={"id": ids[0], "features": [0.0] * F}, headers=AUTH)
    assert r.status_code == 409 and "already exists" in r.json()["error"]
    assert c.post("/items", json={"id": "new-5", "features": [0.0] * F}, headers=AUTH).status_code == 201
    assert c.post("/items", json={"id": "new-5", "features": [0.0] * F}, headers=AUTH).status_code == 409
    # nothing but new-5 was inserted
    assert c.get("/healthz").json()["items"] == len(ids) + 1


def test_post_items_is_live_logged_and_replayed(served, artifacts):
    srv, c, log = served
    ids = _ids(artifacts)
    users = np.load(artifacts / "users.npz")
    emb = np.load(artifacts / "embeddings.npy")
    # a new item engaged by the users of item 7 behaves like item 7's neighbourhood
    feats = np.load(artifacts / "layer_0.npy")  # any width-F row: take item 7's input from the dataset below
    del feats
    x = json.loads((artifacts / "features.json").read_text())
    assert x["width"] > 0
    owners = [str(users["user_ids"][u]) for u in range(len(users["user_ids"]))
              if 7 in users["items"][users["ptr"][u]:users["ptr"][u + 1]]][:20]
    r = c.post("/items", json={"id": "fresh", "engaged_users": owners, "co_engaged_items": [ids[7]],
                               "features": [0.0] * x["width"]}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["neighbours"] > 0 and r.json()["index"] == len(ids)
    # retrievable at once, both as a query and as an answer
    sim = c.get("/items/fresh/similar", params={"k": 10}).json()["items"]
    assert len(sim) == 10
    top = sim[0]["id"]
    back = c.get(f"/items/{top}/similar", params={"k": len(ids) - 1}).json()["items"]
    assert "fresh" in [it["id"] for it in back]
    assert c.post("/recommendations", json={"history": ["fresh"], "k": 3}).status_code == 200
    # the log holds it; a new server replays it (stored vectors) and answers the same
    recs = ItemLog(log).read()
    assert [r_["item"]["id"] for r_ in recs] == ["fresh"]
    state = ServiceState(artifacts, log)
    assert state.replayed == {"stored": 1, "recomputed": 0, "skipped": 0}
    assert [it["id"] for it in state.rec.similar_items("fresh", 10)["items"]] == [it["id"] for it in sim]
    assert emb.shape[0] == len(ids)
    # metrics: counts by route template, index size
    text = c.get("/metrics").text
    assert 'pinsage_requests_total{endpoint="/items/{item_id}/similar",method="GET",status="200"}' in text
    assert f"pinsage_index_items {float(len(ids) + 1)}" in text
    assert "pinsage_request_seconds_bucket" in text


def test_neighbour_table_answers_equal_the_index_also_after_inserts(served, artifacts):
    """Catalogue items are answered from predict's neighbours.npy merged with an exact scan of the
    inserted items: the same items as a search of the live index (which holds the inserted ones)."""
    from app.retrieval import search

    srv, c, _ = served
    ids = _ids(artifacts)
    F = _width(artifacts)
    m = json.loads((artifacts / "manifest.json").read_text())
    assert m["neighbours"]["k"] == min(50, len(ids) - 1) and (artifacts / "neighbours.npy").is_file()
    rec = srv.server.config.app.state.holder["state"].rec
    emb = np.load(artifacts / "embeddings.npy")

    def check():
        for i in range(0, len(ids), max(1, len(ids) // 25)):
            got = c.get(f"/items/{ids[i]}/similar", params={"k": 10}).json()["items"]
            _, ref = search(rec.index, rec.vectors.rows([i]), 10, exclude=[[i]])
            assert [it["id"] for it in got] == [rec.item_ids[j] for j in ref[0]]

    check()
    # new items that copy catalogue vectors' directions: they must show up in their neighbours' answers
    for j in range(5):
        x = [float(v) for v in np.random.default_rng(j).standard_normal(F)]
        assert c.post("/items", json={"id": f"nb-{j}", "features": x}, headers=AUTH).status_code == 201
    check()
    # a catalogue item whose 10th neighbour (catalogue and new items alike) scores below a new item
    # has that new item in its answer
    new = np.stack([rec.vectors.rows([rec.item_index[f"nb-{j}"]])[0] for j in range(5)])
    s = np.concatenate([emb @ emb.T, emb @ new.T], axis=1)
    np.fill_diagonal(s, -np.inf)
    tenth = np.sort(s, axis=1)[:, -10]
    hits = [(i, f"nb-{j}") for j in range(5) for i in np.flatnonzero(emb @ new[j] > tenth + 1e-4)[:3]]
    assert hits
    for i, new_id in hits:
        assert new_id in [it["id"] for it in c.get(f"/items/{ids[i]}/similar", params={"k": 10}).json()["items"]]


def test_concurrent_posts_are_group_committed(served, artifacts):
    """Many POST /items at once: every good one acknowledged with its own index, a duplicate in the
    same burst gets 409, a bad one 422, and the log holds exactly the acknowledged ones."""
    import asyncio

    srv, c, log = served
    n0 = len(_ids(artifacts))
    F = _width(artifacts)

    async def burst():
        async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=60) as a:
            bodies = [{"id": f"g-{j}", "features": [j / 40.0] * F} for j in range(40)]
            bodies += [{"id": "g-3", "features": [0.0] * F}, {"id": "g-bad", "features": [0.0] * (F + 2)}]
            return await asyncio.gather(*(a.post("/items", json=b) for b in bodies))

    rs = asyncio.run(burst())
    codes = [r.status_code for r in rs]
    assert codes[:40].count(201) + codes[40:41].count(201) == 40  # one of the two "g-3" wins
    assert sorted(codes).count(409) == 1 and codes[41] == 422
    indices = sorted(r.json()["index"] for r in rs if r.status_code == 201)
    assert indices == list(range(n0, n0 + 40))
    logged = [r["item"]["id"] for r in ItemLog(log).read()]
    assert sorted(logged) == sorted({f"g-{j}" for j in range(40)})
    for j in range(40):
        assert c.get(f"/items/g-{j}/similar", params={"k": 3}).status_code == 200


def test_torn_log_tail_is_ignored_and_recomputed_on_other_artifacts(artifacts, tmp_path):
    F = _width(artifacts)
    log = tmp_path / "log.jsonl"
    s = ServiceState(artifacts, log)
    s.insert(__import__("app.inductive", fromlist=["NewItem"]).NewItem(id="a", features=[0.1] * F))
    with open(log, "ab") as f:
        f.write(b'{"artifacts": "x", "item": {"id": "b"')  # killed mid-write: never acknowledged
    s2 = ServiceState(artifacts, log)
    assert "a" in s2.rec.item_index and "b" not in s2.rec.item_index
    assert log.read_bytes().endswith(b"\n")
    # a log written against other artifacts is re-embedded from the request, same result here
    lines = log.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["artifacts"] = "other"
    rec.pop("sha256")  # a record without its checksum (as logs written before checksums) is accepted
    log.write_text(json.dumps(rec) + "\n")
    s3 = ServiceState(artifacts, log)
    assert s3.replayed["recomputed"] == 1
    np.testing.assert_allclose(s3.rec.vectors.rows([s3.rec.item_index["a"]]),
                               s2.rec.vectors.rows([s2.rec.item_index["a"]]), atol=1e-5)


def test_reload_swaps_atomically_without_dropping_requests(served, artifacts, tmp_path):
    srv, c, log = served
    ids = _ids(artifacts)
    F = _width(artifacts)
    assert c.post("/items", json={"id": "kept", "features": [0.2] * F}, headers=AUTH).status_code == 201
    errors, done = [], threading.Event()

    def hammer():
        with httpx.Client(base_url=srv.url, timeout=30) as h:
            while not done.is_set():
                r = h.get(f"/items/{ids[1]}/similar", params={"k": 5})
                if r.status_code != 200:
                    errors.append(r.status_code)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        r = c.post("/admin/reload", json={"artifacts": str(artifacts)}, headers=AUTH)
    finally:
        done.set()
        t.join()
    assert r.status_code == 200, r.text
    assert r.json()["replayed"]["stored"] == 1 and not errors
    assert c.get("/items/kept/similar").status_code == 200
    bad = c.post("/admin/reload", json={"artifacts": str(tmp_path / "missing")}, headers=AUTH)
    assert bad.status_code == 422 and "manifest.json" in bad.json()["error"]
    assert c.get("/items/kept/similar").status_code == 200  # the old state still serves


def test_serve_refuses_write_endpoints_without_token(artifacts, capsys, monkeypatch):
    from app.serve import serve_main

    monkeypatch.delenv("PINSAGE_SERVE_TOKEN", raising=False)
    assert serve_main(["--artifacts", str(artifacts), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "PINSAGE_SERVE_TOKEN is not set" in err and "--read-only" in err
    app = create_app(artifacts, read_only=True)
    assert "/items" not in {r.path for r in app.routes if "POST" in getattr(r, "methods", set())}


def test_non_loopback_host_protects_reads(artifacts):
    srv = Server(create_app(artifacts, token=TOKEN, protect_reads=True, log_path=None, read_only=False))
    try:
        ids = _ids(artifacts)
        with httpx.Client(base_url=srv.url) as c:
            assert c.get(f"/items/{ids[0]}/similar").status_code == 401
            assert c.get(f"/items/{ids[0]}/similar", headers=AUTH).status_code == 200
    finally:
        srv.stop()
        p = default_log_path(artifacts)
        if p.exists():
            p.unlink()


def test_kill_9_restart_keeps_acknowledged_items(artifacts, tmp_path):
    """A real `pinsage serve` process: insert, kill -9, restart, every acknowledged item is back."""
    F = _width(artifacts)
    log = tmp_path / "k9.jsonl"
    port = free_port()
    env = {**os.environ, "PINSAGE_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(PROJECT)}
    cmd = [sys.executable, "-m", "app.cli", "serve", "--artifacts", str(artifacts), "--port", str(port),
           "--log", str(log)]

    def start():
        p = subprocess.Popen(cmd, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until_serving(p, f"http://127.0.0.1:{port}", seconds=120)
        return p

    p = start()
    acked = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as c:
            for i in range(30):
                r = c.post("/items", json={"id": f"k9-{i}", "features": list(np.full(F, i / 30.0))})
                assert r.status_code == 201
                acked.append(f"k9-{i}")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    p = start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert c.get("/healthz").json()["replayed"]["stored"] == len(acked)
            for i in acked:
                assert c.get(f"/items/{i}/similar", params={"k": 3}).status_code == 200
    finally:
        p.terminate()
        p.wait(10)


def test_embed_new_cli(artifacts, tmp_path, capsys):
    from app.serve import embed_new_main

    F = _width(artifacts)
    ids = _ids(artifacts)
    users = np.load(artifacts / "users.npz")
    csv_path = tmp_path / "new.csv"
    feats = "|".join(["0.5"] * F)
    csv_path.write_text("id,features,engaged_users,co_engaged_items\n"
                        f"n1,{feats},{users['user_ids'][0]}|{users['user_ids'][1]},\n"
                        f"n2,{feats},,{ids[2]}|n1\n")
    log = tmp_path / "cli.jsonl"
    out = tmp_path / "new.npz"
    assert embed_new_main(["--artifacts", str(artifacts), "--items", str(csv_path), "--log", str(log),
                           "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 2
    z = np.load(out)
    assert list(z["ids"]) == ["n1", "n2"] and z["embeddings"].shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, atol=1e-5)
    # a server replays what the CLI wrote
    s = ServiceState(artifacts, log)
    assert {"n1", "n2"} <= set(s.rec.item_index)
    # bad rows: one clear line, nothing logged
    bad = tmp_path / "bad.csv"
    bad.write_text("id,features\nb1,1|2\n")
    assert embed_new_main(["--artifacts", str(artifacts), "--items", str(bad), "--log", str(log)]) == 2
    assert "expects" in capsys.readouterr().err
    assert len(ItemLog(log).read()) == 2
    assert embed_new_main(["--artifacts", str(artifacts), "--items", str(csv_path), "--log", str(log)]) == 2
    assert "already exists" in capsys.readouterr().err
