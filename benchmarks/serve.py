"""Serving benchmarks: inductive quality of new items, and HTTP load on a 1M-item index.

    # inductive quality (see benchmarks/SERVE.md for the training/predict commands before it)
    PYTHONPATH=. python benchmarks/serve.py inductive --data-config configs/data/movielens-100k.yaml \\
        --cold-data outputs/serve/cold-data --cold-artifacts outputs/serve/art/ml100k-cold \\
        --full-artifacts outputs/serve/art/ml100k-full
    # load: locust on 127.0.0.1 against `pinsage serve` on a 1M-item IVF-PQ index
    PYTHONPATH=. python benchmarks/serve.py build-index --out outputs/serve/art/load-1m
    PYTHONPATH=. python benchmarks/serve.py load --artifacts outputs/serve/art/load-1m

Both merge their rows into ``benchmarks/results/serve.json``:
``{"load": [{"endpoint", "num_items", "clients", "qps", "p50_ms", "p99_ms", "errors", ...}],
"inductive": [{"dataset", "cold_hit@100", "retrained_hit@100", "warm_hit@100", "popularity_hit@100", ...}],
"machine": {...}}``.

**inductive**: the cold run was trained on a copy of the log without 10% of the items
(``benchmarks/serve_cold_data.py``); a real ``pinsage serve`` on its artifacts takes every held-out
item through ``POST /items`` with its content (title, genres, year) and its engagements of the full
log's *training* part (``engaged_users``); the vectors the server computed are read back from its
item log.  The held-out pairs of the full dataset (validation + test: neither model trained on
them) are ranked against the whole catalogue by the shared evaluation code
(``models.baselines.grouped_target_ranks``), split into *cold* pairs (query or target held out) and
*warm* pairs (neither), for the cold run + inductive items, the retrained run (trained on the full
log), and popularity.  Also: the cold items embedded from content only (no engagements), through
the same inductive code.

**load**: a real ``pinsage serve`` process; locust (``FastHttpUser``, closed loop, no think time)
at 1, 8 and 32 clients, each run bounded by ``--seconds`` and ``--max-requests``; p50/p99 from
locust's own latency records; then 8 query clients + ``POST /items`` at ``--write-rate``/s, then
``kill -9`` of the server, a restart, and a check that every acknowledged item answers.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
TOKEN = "bench-token"


def machine() -> dict:
    import platform

    from machine import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "note": "2-core VM shared with other engineers' jobs (load average recorded per row)"}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def merge(section: str, rows: list, key) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old = [r for r in data.get(section, []) if key(r) not in {key(x) for x in rows}]
    data[section] = old + rows
    data["machine"] = machine()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, RESULTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``pinsage serve`` as a child process on 127.0.0.1."""

    def __init__(self, artifacts, log, port=None, threads=1, env=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "app.cli", "serve", "--artifacts", str(artifacts), "--port", str(self.port),
                    "--log", str(log), "--threads", str(threads)]
        self.env = {**os.environ, "PINSAGE_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = None

    def start(self, timeout=600):
        import httpx

        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while time.perf_counter() - t0 < timeout:
            try:
                r = httpx.get(self.url + "/healthz", timeout=2)
                if r.status_code == 200:
                    self.start_seconds = time.perf_counter() - t0
                    return r.json()
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("server did not start")

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


# ----------------------------------------------------------------------------------------------
# inductive quality
# ----------------------------------------------------------------------------------------------
def load_data(cfg_path: str, root=None):
    import yaml

    from datamodules.datasets import load_dataset

    cfg = yaml.safe_load(Path(cfg_path).read_text())
    return load_dataset(cfg["dataset"], root=str(root or (ROOT / cfg.get("root", "../shared/data"))),
                        features=cfg.get("features"), split=cfg.get("split", "auto"),
                        reader_args=cfg.get("reader_args"))


def ids_of(folder) -> list:
    import csv

    with open(Path(folder) / "items.csv", newline="") as f:
        return [r["id"] for r in csv.DictReader(f)]


def metrics(emb_or_scorer, q, t, num_items, graph=None):
    import torch

    from models.baselines import (baseline_scorer, embedding_item_scorer, grouped_target_ranks,
                                  item_to_item_metrics)

    if isinstance(emb_or_scorer, str):
        scorer = baseline_scorer(emb_or_scorer, *graph, num_items)
    else:
        scorer = embedding_item_scorer(torch.from_numpy(emb_or_scorer))
    q, t = torch.as_tensor(q), torch.as_tensor(t)
    ranks = grouped_target_ranks(scorer, q, t, exclude_query=True)
    m = item_to_item_metrics(ranks, ks=(10, 100), num_items=num_items)
    return {"hit@10": round(m["hit_rate@10"], 4), "hit@100": round(m["hit_rate@100"], 4), "pairs": int(q.numel())}


def inductive(args) -> None:
    import httpx

    ds = load_data(args.data_config)
    name = ds.name
    cold_raw = set(json.loads((Path(args.cold_data) / name / "cold_items.json").read_text())["cold_items"])
    raw_items = [str(x) for x in ds.interactions.item_ids.tolist()]
    raw_users = [str(x) for x in ds.interactions.user_ids.tolist()]
    cold = np.array([r in cold_raw for r in raw_items])
    table = ds.interactions.item_table
    g = ds.train_graph
    cat_names = np.asarray(table.category_names) if table is not None and table.categories is not None else None

    def payload(i, with_engagements=True):
        p = {"id": raw_items[i]}
        if table is not None and table.titles is not None and table.titles[i]:
            p["title"] = str(table.titles[i])
        if cat_names is not None:
            c = cat_names[np.asarray(table.categories[i]).astype(bool)].tolist()
            if c:
                p["categories"] = c
        if table is not None and table.years is not None and table.years[i] >= 0:
            p["year"] = int(table.years[i])
        if with_engagements:
            p["engaged_users"] = [raw_users[u] for u in g.item_users[g.item_ptr[i]:g.item_ptr[i + 1]]]
        return p

    cold_idx = np.flatnonzero(cold)
    log = Path(tempfile.mkdtemp(prefix="serve-inductive-")) / "items.jsonl"
    srv = ServeProcess(args.cold_artifacts, log)
    srv.start()
    t0 = time.perf_counter()
    failed = []
    try:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            for i in cold_idx:
                r = c.post("/items", json=payload(i))
                if r.status_code != 201:
                    failed.append((raw_items[i], r.status_code, r.text[:200]))
            post_s = time.perf_counter() - t0
            # a live query on an inserted item, answered by the server's index
            probe = c.get(f"/items/{raw_items[cold_idx[0]]}/similar", params={"k": 10}).json()
    finally:
        srv.stop()
    if failed:
        raise RuntimeError(f"{len(failed)} POST /items failed, e.g. {failed[:3]}")
    logged = {r["item"]["id"]: np.asarray(r["z"], dtype=np.float32) for r in map(json.loads, log.read_text().splitlines())}

    cold_ids = ids_of(args.cold_artifacts)
    cold_pos = {r: i for i, r in enumerate(cold_ids)}
    e_cold_art = np.load(Path(args.cold_artifacts) / "embeddings.npy")
    d = e_cold_art.shape[1]
    E_cold = np.zeros((ds.num_items, d), dtype=np.float32)
    for i, r in enumerate(raw_items):
        E_cold[i] = logged[r] if cold[i] else e_cold_art[cold_pos[r]]
    # the live answer equals the offline ranking of the same vectors
    top = [it["id"] for it in probe["items"]]
    qv = E_cold[cold_idx[0]]
    s = E_cold @ qv
    s[cold_idx[0]] = -np.inf
    offline = [raw_items[j] for j in np.argsort(-s, kind="stable")[:10]]
    full_ids = ids_of(args.full_artifacts)
    assert full_ids == raw_items, "the retrained artifacts are not in the full dataset's item order"
    E_full = np.load(Path(args.full_artifacts) / "embeddings.npy")

    # content only, through the same inductive code (no server needed: same InductiveEmbedder)
    from app.inductive import InductiveEmbedder, NewItem
    from app.recommend import Recommender

    rec = Recommender(args.cold_artifacts)
    emb = InductiveEmbedder(Path(args.cold_artifacts), rec.manifest, rec.user_index)
    E_content = E_cold.copy()
    items = [NewItem.from_dict(payload(i, with_engagements=False)) for i in cold_idx]
    z, _, _ = emb.embed(items, rec.item_index.get)
    E_content[cold_idx] = z

    pairs = np.concatenate([np.asarray(ds.val_pairs).reshape(-1, 2), np.asarray(ds.test_pairs).reshape(-1, 2)])
    is_cold = cold[pairs[:, 0]] | cold[pairs[:, 1]]
    graph = (g.user_ptr, g.user_items, g.item_ptr, g.item_users)
    out = {"dataset": name, "num_items": int(ds.num_items), "cold_items": int(cold.sum()),
           "cold_items_without_training_engagements": int((np.diff(g.item_ptr)[cold_idx] == 0).sum()),
           "post_items_seconds": round(post_s, 2), "post_items_per_s": round(len(cold_idx) / post_s, 1),
           "live_top10_equals_offline": top == offline, "epochs": args.epochs, "load_avg": load_avg()}
    for part, mask in (("cold", is_cold), ("warm", ~is_cold)):
        q, t = pairs[mask, 0], pairs[mask, 1]
        runs = {"inductive": metrics(E_cold, q, t, ds.num_items), "retrained": metrics(E_full, q, t, ds.num_items),
                "popularity": metrics("popularity", q, t, ds.num_items, graph)}
        if part == "cold":
            runs["content_only"] = metrics(E_content, q, t, ds.num_items)
        out[f"{part}_pairs"] = int(mask.sum())
        for run, m in runs.items():
            out[f"{part}/{run}"] = m
    out["cold_hit@10"] = out["cold/inductive"]["hit@10"]
    out["cold_hit@100"] = out["cold/inductive"]["hit@100"]
    out["retrained_hit@10"] = out["cold/retrained"]["hit@10"]
    out["retrained_hit@100"] = out["cold/retrained"]["hit@100"]
    out["warm_hit@10"] = out["warm/inductive"]["hit@10"]
    out["warm_hit@100"] = out["warm/inductive"]["hit@100"]
    out["popularity_hit@10"] = out["cold/popularity"]["hit@10"]
    out["popularity_hit@100"] = out["cold/popularity"]["hit@100"]
    out["cold_vs_retrained_hit@100"] = round(out["cold_hit@100"] / max(out["retrained_hit@100"], 1e-9), 3)
    print(json.dumps(out, indent=1))
    merge("inductive", [out], key=lambda r: r["dataset"])


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------
LOCUSTFILE = '''
import json, os, random, threading
from locust import FastHttpUser, task, constant_throughput, events

IDS = json.load(open(os.environ["BENCH_IDS"]))
MAX = int(os.environ.get("BENCH_MAX_REQUESTS", "0"))
K = int(os.environ.get("BENCH_K", "10"))
W = int(os.environ.get("BENCH_WIDTH", "0"))
USERS = json.load(open(os.environ["BENCH_USERS"])) if os.environ.get("BENCH_USERS") else []
ACK = os.environ.get("BENCH_ACK")
_count = [0]
_lock = threading.Lock()

@events.request.add_listener
def _bound(**kw):
    _count[0] += 1
    if MAX and _count[0] >= MAX:
        r = kw.get("context", {}) or {}
        runner = getattr(events, "_bench_runner", None)
        if runner is not None:
            runner.quit()

@events.init.add_listener
def _init(environment, **kw):
    events._bench_runner = environment.runner

class Reader(FastHttpUser):
    weight = int(os.environ.get("BENCH_READERS", "1"))
    wait_time = lambda self: 0
    @task
    def similar(self):
        i = random.choice(IDS)
        self.client.get(f"/items/{i}/similar?k={K}", name="/items/{id}/similar")

class Writer(FastHttpUser):
    weight = int(os.environ.get("BENCH_WRITERS", "0"))
    fixed_count = int(os.environ.get("BENCH_WRITERS", "0"))
    wait_time = constant_throughput(float(os.environ.get("BENCH_WRITE_RATE_PER_USER", "1")))
    @task
    def add(self):
        i = "new-%d-%d" % (os.getpid(), random.getrandbits(48))
        body = {"id": i, "features": [random.gauss(0, 1) for _ in range(W)],
                "engaged_users": random.sample(USERS, 5) if USERS else []}
        with self.client.post("/items", json=body, name="POST /items",
                              headers={"Authorization": "Bearer bench-token"}, catch_response=True) as r:
            if r.status_code == 201:
                with _lock, open(ACK, "a") as f:
                    f.write(i + "\\n")
                r.success()
            else:
                r.failure(f"status {r.status_code}")
'''


def locust_run(url, ids_file, clients, seconds, max_requests, out_prefix, env_extra=None):
    env = {**os.environ, "BENCH_IDS": str(ids_file), "BENCH_MAX_REQUESTS": str(max_requests), **(env_extra or {})}
    lf = Path(out_prefix).parent / "locustfile.py"
    lf.write_text(LOCUSTFILE)
    cmd = [sys.executable, "-m", "locust", "-f", str(lf), "--headless", "-u", str(clients), "-r", str(clients),
           "--run-time", f"{seconds}s", "--host", url, "--csv", str(out_prefix), "--only-summary",
           "--stop-timeout", "5", "--loglevel", "WARNING"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    wall = time.perf_counter() - t0
    import csv

    with open(f"{out_prefix}_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    if not rows:
        raise RuntimeError(p.stderr[-2000:])
    return rows, wall


def _row(r, endpoint, num_items, clients, extra=None):
    n = int(r["Request Count"])
    out = {"endpoint": endpoint, "num_items": num_items, "clients": clients, "requests": n,
           "qps": round(float(r["Requests/s"]), 1), "p50_ms": float(r["50%"]), "p99_ms": float(r["99%"]),
           "errors": int(r["Failure Count"]), "load_avg": load_avg()}
    out.update(extra or {})
    return out


def load(args) -> None:
    import httpx

    art = Path(args.artifacts)
    ids = ids_of(art)
    n = len(ids)
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    rng = np.random.default_rng(0)
    ids_file = work / "ids.json"
    ids_file.write_text(json.dumps([ids[i] for i in rng.choice(n, size=min(n, 200_000), replace=False)]))
    users = np.load(art / "users.npz")["user_ids"]
    users_file = work / "users.json"
    users_file.write_text(json.dumps([str(u) for u in users[rng.choice(len(users), size=min(len(users), 50_000),
                                                                        replace=False)]]))
    width = json.loads((art / "features.json").read_text())["width"]
    log = work / "items.jsonl"
    srv = ServeProcess(art, log, threads=1)
    h = srv.start()
    rows = []
    try:
        print(f"server up in {srv.start_seconds:.1f}s: {h}", flush=True)
        # warm-up (page the index in), not recorded
        locust_run(srv.url, ids_file, 8, 10, 5000, work / "warm")
        for clients in args.clients:
            stats, wall = locust_run(srv.url, ids_file, clients, args.seconds, args.max_requests, work / f"c{clients}")
            row = _row(stats["/items/{id}/similar"], "GET /items/{id}/similar?k=10", n, clients,
                       {"seconds": round(wall, 1)})
            print(json.dumps(row), flush=True)
            rows.append(row)
        # reads + writes at --write-rate per second
        ack = work / "acked.txt"
        writers = 4
        stats, wall = locust_run(srv.url, ids_file, 8 + writers, args.seconds, 0, work / "mixed", {
            "BENCH_READERS": "8", "BENCH_WRITERS": str(writers), "BENCH_WIDTH": str(width),
            "BENCH_USERS": str(users_file), "BENCH_ACK": str(ack),
            "BENCH_WRITE_RATE_PER_USER": str(args.write_rate / writers)})
        acked = ack.read_text().split() if ack.is_file() else []
        rows.append(_row(stats["/items/{id}/similar"], "GET /items/{id}/similar?k=10 (during POST /items)", n, 8,
                         {"seconds": round(wall, 1)}))
        w = _row(stats["POST /items"], "POST /items", n, writers, {"seconds": round(wall, 1), "target_rate": args.write_rate})
        # every acknowledged item answers now ...
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            live_missing = sum(c.get(f"/items/{i}/similar", params={"k": 10}).status_code != 200 for i in acked)
        # ... and after kill -9 and a restart
        srv.kill9()
        h2 = srv.start()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            after_missing = sum(c.get(f"/items/{i}/similar", params={"k": 10}).status_code != 200 for i in acked)
        w.update({"acknowledged": len(acked), "missing_live": live_missing, "missing_after_kill9_restart": after_missing,
                  "restart_seconds": round(srv.start_seconds, 1), "replayed": h2["replayed"]})
        print(json.dumps(w), flush=True)
        rows.append(w)
    finally:
        srv.stop()
    merge("load", rows, key=lambda r: (r["endpoint"], r["num_items"], r["clients"]))


# ----------------------------------------------------------------------------------------------
# a 1M-item artifact folder for the load test (serving path real, vector values synthetic)
# ----------------------------------------------------------------------------------------------
def build_index_folder(args) -> None:
    """Assemble a complete artifact folder (every file `pinsage serve` and `POST /items` read) for
    ``--n`` items without running the model over them: clustered unit embeddings (as in
    benchmarks/ann.py), random per-layer vectors, an untrained PinSage of the right shape, a random
    bipartite walk graph.  Only the values are synthetic; the index, the serving and the inductive
    code are the real ones."""
    import shutil

    import torch

    from ann import clustered_embeddings
    from app.inductive import MODEL_ARGS
    from app.retrieval import build_index, save_index
    from datamodules.graph import InteractionGraph
    from models.pinsage import PinSage

    n, d, hidden, F, U, E = args.n, args.dims, args.hidden, args.features, args.users, args.edges
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    emb, _ = clustered_embeddings(n, d, 1000, 8, seed=0)
    np.save(tmp / "embeddings.npy", emb)
    rng = np.random.default_rng(1)
    for k in range(2):
        h = np.empty((n, hidden), dtype=np.float32)
        for s in range(0, n, 100_000):
            h[s:s + 100_000] = rng.standard_normal((min(100_000, n - s), hidden), dtype=np.float32)
        np.save(tmp / f"layer_{k}.npy", np.maximum(h, 0))
        del h
    users = rng.integers(0, U, E)
    items = np.concatenate([np.arange(n), rng.integers(0, n, E - n)])
    g = InteractionGraph.from_edges(users, items, U, n)
    np.savez(tmp / "walk_graph.npz", item_ptr=g.item_ptr, item_users=g.item_users, user_ptr=g.user_ptr,
             user_items=g.user_items)
    np.savez(tmp / "users.npz", user_ids=np.array([f"u{u}" for u in range(U)]), ptr=g.user_ptr,
             items=g.user_items.astype(np.int64))
    np.savez(tmp / "neighbourhoods.npz", ptr=np.zeros(n + 1, np.int64), items=np.zeros(0, np.int64),
             weights=np.zeros(0, np.float32))
    model = PinSage(F, hidden, d, num_layers=2)
    torch.save({"hparams": {k: getattr(model, k) for k in MODEL_ARGS if hasattr(model, k)},
                "state_dict": model.state_dict()},
               tmp / "model.pt")
    names = [f"external:{i}" for i in range(F)]
    (tmp / "features.json").write_text(json.dumps({
        "names": names, "width": F, "text_model": "", "buildable": False, "mean": [0.0] * F, "std": [1.0] * F,
        "binary": [False] * F, "category_names": [], "decades": [], "reason": "synthetic load-test artifacts"}))
    with open(tmp / "items.csv", "w") as f:
        f.write("index,id,title\n")
        f.writelines(f"{i},{i},item {i}\n" for i in range(n))
    t1 = time.perf_counter()
    save_index(build_index(emb, "ivfpq"), tmp / "index.faiss")
    manifest = {"dataset": "synthetic-load", "count": n, "dims": d, "index": "ivfpq", "checkpoint": None,
                "num_layers": 2, "num_neighbors": 10, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": {"note": build_index_folder.__doc__}, "index_build_seconds": round(time.perf_counter() - t1, 1),
                "inductive": {"layers": ["layer_0.npy", "layer_1.npy"], "hidden": hidden, "features_buildable": False,
                              "walks": {"num_walks": 20, "walk_length": 2, "restart_prob": 0.5, "top_t": 10, "seed": 0}}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True) if (out / "manifest.json").is_file() else None
    os.replace(tmp, out)
    print(json.dumps({"out": str(out), "items": n, "seconds": round(time.perf_counter() - t0, 1)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("inductive")
    a.add_argument("--data-config", required=True)
    a.add_argument("--cold-data", required=True)
    a.add_argument("--cold-artifacts", required=True)
    a.add_argument("--full-artifacts", required=True)
    a.add_argument("--epochs", type=int, default=4, help="recorded: epochs both runs were trained")
    b = sub.add_parser("load")
    b.add_argument("--artifacts", required=True)
    b.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    b.add_argument("--seconds", type=int, default=30)
    b.add_argument("--max-requests", type=int, default=60_000)
    b.add_argument("--write-rate", type=float, default=100.0)
    c = sub.add_parser("build-index")
    c.add_argument("--out", required=True)
    c.add_argument("--n", type=int, default=1_000_000)
    c.add_argument("--dims", type=int, default=64)
    c.add_argument("--hidden", type=int, default=128)
    c.add_argument("--features", type=int, default=16)
    c.add_argument("--users", type=int, default=100_000)
    c.add_argument("--edges", type=int, default=5_000_000)
    args = ap.parse_args()
    {"inductive": inductive, "load": load, "build-index": build_index_folder}[args.cmd](args)


if __name__ == "__main__":
    main()
