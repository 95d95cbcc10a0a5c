"""The explorer page on a 1M-item catalogue: page load and search latency.

    PYTHONPATH=. python benchmarks/explorer.py build --out outputs/explorer/art-1m      # ~1 min
    PYTHONPATH=. python benchmarks/explorer.py run --artifacts outputs/explorer/art-1m
    PYTHONPATH=. python benchmarks/explorer.py run --artifacts outputs/serve/art/load-1m  # serve.py's index

``build`` writes a light 1M-item artifact folder: clustered embeddings (``ann.clustered_embeddings``,
as ``benchmarks/serve.py build-index``), an exact FAISS index, no neighbour table, no inductive files
(the page's search and load never touch them), and MovieLens-like titles drawn from word lists
("The Dark River of Night (1987)"), so that substring queries hit many titles at different rates,
unlike serve.py's ``item <i>`` titles.

``run`` starts a real ``pinsage serve --read-only`` on the folder and measures:

* **search**: ``GET /search?q=..&limit=50`` over HTTP (httpx, one connection, sequential), for
  queries that match thousands of titles, a few, or none (the worst case: the whole catalogue is
  scanned twice, prefix then substring); p50 / p99 / max per query over ``--repeats``;
* **page load** in the distribution's Chromium (Playwright), in the page's own clock from the start
  of the navigation: ``loadEventEnd`` (HTML + CSS + JS) and the first view drawn (``/healthz``
  answered: the ``pinsage-status`` mark and the first ``pinsage-view`` measure of explorer.js),
  cold (a new browser context) ``--loads`` times; and a search typed into the page, from the hash
  change to its results drawn (the ``pinsage-view`` measure);
* the title index alone (:class:`app.explorer.TitleSearch`): build time and per-query time in-process.

Rows go to ``benchmarks/results/explorer.json`` with the machine and its load average.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "explorer.json"
QUERIES = ["the", "star", "dark river", "night of", "(1987)", "zebra crossing", "no such title", "42"]

WORDS_A = ["Dark", "Blue", "Last", "Silent", "Lost", "Golden", "Broken", "Wild", "Secret", "Little", "Red", "Cold",
           "Star", "Long", "Strange", "Hidden", "Bright", "Burning", "Empty", "Final"]
WORDS_N = ["River", "Night", "City", "House", "Road", "Heart", "Moon", "Garden", "Island", "Game", "Wars", "Man",
           "Woman", "Summer", "Winter", "Dream", "Storm", "Letter", "Bridge", "Kingdom", "Song", "Shadow", "Fire"]


def titles_1m(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(WORDS_A), n)
    b = rng.integers(0, len(WORDS_N), n)
    c = rng.integers(0, len(WORDS_N), n)
    form = rng.integers(0, 4, n)
    year = rng.integers(1920, 2025, n)
    out = []
    for i in range(n):
        A, B, C = WORDS_A[a[i]], WORDS_N[b[i]], WORDS_N[c[i]]
        t = (f"The {A} {B}", f"{A} {B} of {C}", f"The {B} of the {A} {C}", f"{B} and {C}")[form[i]]
        out.append(f"{t} ({year[i]})")
    out[n // 2] = "Zebra Crossing (2001)"
    return out


def build(args) -> None:
    import shutil

    from ann import clustered_embeddings
    from app.artifact_format import FORMAT as ARTIFACTS_FORMAT
    from app.retrieval import build_index, save_index

    n, d = args.n, args.dims
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    emb, _ = clustered_embeddings(n, d, 1000, 8, seed=0)
    np.save(tmp / "embeddings.npy", emb)
    save_index(build_index(emb, "exact"), tmp / "index.faiss")
    import csv

    with open(tmp / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "id", "title"])
        w.writerows((i, i, t) for i, t in enumerate(titles_1m(n)))
    rng = np.random.default_rng(1)
    U = 1000
    ptr = np.arange(0, 20 * (U + 1), 20, dtype=np.int64)
    np.savez(tmp / "users.npz", user_ids=np.array([f"u{u}" for u in range(U)]), ptr=ptr,
             items=rng.integers(0, n, 20 * U).astype(np.int64), encoder=np.eye(d, dtype=np.float32))
    manifest = {"format": ARTIFACTS_FORMAT, "dataset": "synthetic-explorer", "count": n, "dims": d, "index": "exact",
                "checkpoint": None, "neighbours": None, "inductive": None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": {"note": build.__doc__},
                "files": sorted(p.name for p in tmp.iterdir()) + ["manifest.json"]}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(json.dumps({"out": str(out), "items": n, "seconds": round(time.perf_counter() - t0, 1)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs, q):
    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 2)


def run(args) -> None:
    import httpx

    from machine import cpu_model

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--artifacts", args.artifacts, "--port",
                             str(port), "--read-only", "--log", str(Path(args.artifacts).with_suffix(".bench.jsonl"))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows = {"artifacts": args.artifacts, "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                                      "load_avg_1m": os.getloadavg()[0]}}
    try:
        client = httpx.Client(base_url=url, timeout=60)
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"pinsage serve exited: {proc.stdout.read()}")
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        rows["server_start_s"] = round(time.perf_counter() - t0, 1)
        rows["items"] = client.get("/healthz").json()["items"]
        search = {}
        for q in QUERIES:
            times, n = [], 0
            for _ in range(args.repeats):
                t = time.perf_counter()
                r = client.get("/search", params={"q": q, "limit": 50})
                times.append(time.perf_counter() - t)
                n = len(r.json()["items"])
            search[q] = {"hits": n, "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99),
                         "max_ms": round(max(times) * 1000, 2)}
        rows["search_http"] = search
        t = time.perf_counter()
        for name in ("/", "/static/explorer.js", "/static/explorer.css"):
            client.get(name)
        rows["page_files_http_ms"] = round((time.perf_counter() - t) * 1000, 2)
        rows["browser"] = _browser(url, args) if args.browser else None
    finally:
        proc.terminate()
        proc.wait(30)
    rows["title_index"] = _direct(args)
    _merge(rows)
    print(json.dumps(rows, indent=1))


def _browser(url: str, args) -> dict:
    import shutil

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).is_file():
        return {"skipped": "no chromium"}
    from playwright.sync_api import sync_playwright

    loads, ready, searches = [], [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        for j in range(args.loads):
            ctx = b.new_context()  # cold: no cache
            page = ctx.new_page()
            page.goto(url + "/")
            page.wait_for_selector("body[data-shown]", state="attached")  # selectors: the page's CSP forbids eval
            page.wait_for_selector("#status:not(:empty)", state="attached")
            # in the page's own clock, from the start of the navigation
            loads.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
            ready.append(page.evaluate("""Math.max(performance.getEntriesByName('pinsage-status')[0].startTime,
                performance.getEntriesByName('pinsage-view')[0].startTime
                + performance.getEntriesByName('pinsage-view')[0].duration)""") / 1000)
            q = ["dark river", "zebra", "night of", "no such title"][j % 4]
            page.fill("#q", q)
            page.press("#q", "Enter")
            page.wait_for_selector(f"body[data-shown='#/search/{q.replace(' ', '%20')}']", state="attached")
            # from the hash change to the results drawn: the /search request + the list
            searches.append(page.evaluate("performance.getEntriesByName('pinsage-view').at(-1).duration") / 1000)
            ctx.close()
        b.close()
    return {"loads": args.loads, "load_event_p50_ms": _pct(loads, 50), "load_event_max_ms": _pct(loads, 100),
            "first_view_p50_ms": _pct(ready, 50), "first_view_max_ms": _pct(ready, 100),
            "search_to_results_p50_ms": _pct(searches, 50), "search_to_results_max_ms": _pct(searches, 100)}


def _direct(args) -> dict:
    import csv

    from app.explorer import TitleSearch

    with open(Path(args.artifacts) / "items.csv", newline="") as f:
        titles = [r["title"] for r in csv.DictReader(f)]
    t = time.perf_counter()
    s = TitleSearch(titles)
    out = {"items": len(titles), "build_s": round(time.perf_counter() - t, 2)}
    for q in QUERIES:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            s.search(q, 51)
            times.append(time.perf_counter() - t)
        out[q] = {"p50_ms": _pct(times, 50), "max_ms": round(max(times) * 1000, 2)}
    return out


def _merge(rows: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
    old["runs"] = [r for r in old["runs"] if r.get("artifacts") != rows["artifacts"]] + [rows]
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(old, indent=1))
    os.replace(tmp, RESULTS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", required=True)
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--dims", type=int, default=64)
    r = sub.add_parser("run")
    r.add_argument("--artifacts", required=True)
    r.add_argument("--repeats", type=int, default=30)
    r.add_argument("--loads", type=int, default=5)
    r.add_argument("--no-browser", dest="browser", action="store_false")
    args = ap.parse_args()
    {"build": build, "run": run}[args.cmd](args)


if __name__ == "__main__":
    main()
