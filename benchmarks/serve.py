"""Serving benchmarks: inductive quality of new items, and HTTP load on a 1M-item index.

    # inductive quality (see benchmarks/SERVE.md for the training/predict commands before it)
    PYTHONPATH=. python benchmarks/serve.py inductive --data-config configs/data/movielens-100k.yaml \\
        --cold-data outputs/serve/cold-data --cold-artifacts outputs/serve/art/ml100k-cold \\
        --full-artifacts outputs/serve/art/ml100k-full
    # load: wrk on 127.0.0.1 against `pinsage serve` on a 1M-item IVF-PQ index + top-50 table
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

**load**: a real ``pinsage serve`` process; ``wrk`` (the C load generator, one thread, closed loop, no
think time; ``apt-get install wrk``) at 1, 8 and 32 connections, each run bounded by ``--seconds``
and ``--max-requests``; p50/p99 from wrk's latency histogram; the server's CPU seconds per answered
request from /proc (what the other jobs on a shared machine cannot change); then 8 query
connections + ``POST /items`` at ``--write-rate``/s (a second wrk, its Lua script sending request
``j`` at ``j / rate``), then every acknowledged item is queried, the server is killed with
``kill -9``, restarted, and every acknowledged item is queried again.
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
# every wrk script ends with this: per-thread last answer time, and one BENCH JSON line at the end
WRK_SUMMARY = r'''
function setup(thread) threads = threads or {}; threads[#threads + 1] = thread end
function done(summary, latency, requests)
  local e = summary.errors
  local active = 0
  for _, t in ipairs(threads or {}) do active = math.max(active, tonumber(t:get("last_us")) or 0) end
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "active_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, active, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
'''

WRK_SCRIPT = r'''
-- closed loop: each connection sends its next request when the answer arrives; ids drawn
-- uniformly from BENCH_IDS; stops after BENCH_MAX_REQUESTS answers (per wrk thread) or -d
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_ts; int clock_gettime(int, bench_ts *); ]]
local ts = ffi.new("bench_ts")
local function now_ms() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) / 1e6 end
local ids = {}
local t_start = nil
last_us = 0
local maxreq = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")
local k = os.getenv("BENCH_K") or "10"
local count = 0
function init(args)
  for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
  math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1"))
end
function request()
  if t_start == nil then t_start = now_ms() end
  return wrk.format("GET", "/items/" .. ids[math.random(#ids)] .. "/similar?k=" .. k)
end
function response(status, headers, body)
  count = count + 1
  last_us = math.floor((now_ms() - t_start) * 1000)
  if maxreq > 0 and count >= maxreq then wrk.thread:stop() end
end
''' + WRK_SUMMARY


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Wrk:
    """``wrk`` (the C load generator, one thread: it needs a few % of a core at these rates) running
    a Lua script (:data:`WRK_SCRIPT`: GET similar, :data:`WRK_POST_SCRIPT`: POST /items), bounded
    by ``seconds`` and by a request count; ``env`` -> ``BENCH_<NAME>`` variables of the script."""

    def __init__(self, url, clients, seconds, work, script=WRK_SCRIPT, name="similar", **env):
        import shutil

        exe = shutil.which("wrk")
        if exe is None:
            raise SystemExit("benchmarks/serve.py load needs wrk (Debian/Ubuntu: apt-get install wrk)")
        path = Path(work) / f"{name}.lua"
        path.write_text(script)
        self.cmd = [exe, "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s", str(path), url]
        self.env = {**os.environ, **{f"BENCH_{k.upper()}": str(v) for k, v in env.items()}}
        self.seconds = seconds

    def start(self):
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def result(self) -> dict:
        out, err = self.proc.stdout.read(), self.proc.stderr.read()  # wrk prints little; ends at -d
        _, code, usage = os.wait4(self.proc.pid, 0)  # this wrk's own CPU time, not its siblings'
        self.proc.returncode = os.waitstatus_to_exitcode(code)
        wall = time.perf_counter() - self.t0
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no result: {out[-1000:]} {err[-1000:]}")
        r = json.loads(line[len("BENCH "):])
        r["wall"], r["wrk_cpu"] = wall, usage.ru_utime + usage.ru_stime
        return r


def _read_row(r, endpoint, num_items, clients, server_cpu, extra=None) -> dict:
    n = r["requests"]
    # until the last answer (wrk's own duration is -d even when the script stopped it earlier)
    secs = (r["active_us"] or r["duration_us"]) / 1e6
    out = {"endpoint": endpoint, "num_items": num_items, "clients": clients, "requests": n,
           "qps": round(n / secs, 1), "p50_ms": round(r["p50_us"] / 1e3, 2), "p99_ms": round(r["p99_us"] / 1e3, 2),
           "max_ms": round(r["max_us"] / 1e3, 1),
           "errors": r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"],
           "load_avg": load_avg(), "seconds": round(secs, 1),
           # CPU per answered request (independent of how much of the machine the other jobs took)
           "server_cpu_ms_per_request": round(1e3 * server_cpu / max(n, 1), 3),
           "server_cpu_share": round(server_cpu / secs, 2), "loadgen": "wrk -t1",
           "loadgen_cpu_share": round(r["wrk_cpu"] / secs, 2)}
    out.update(extra or {})
    return out


WRK_POST_SCRIPT = r'''
-- POST /items at BENCH_RATE per second in all (per wrk thread: BENCH_RATE / threads): request j is
-- due at j / rate after the start; a connection that is free takes the next due request
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_ts; int clock_gettime(int, bench_ts *); ]]
local ts = ffi.new("bench_ts")
local function now_ms() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) / 1e6 end
local rate = tonumber(os.getenv("BENCH_RATE") or "100")
local total = tonumber(os.getenv("BENCH_TOTAL") or "0")
local width = tonumber(os.getenv("BENCH_WIDTH") or "0")
local token = os.getenv("BENCH_TOKEN") or ""
local prefix = os.getenv("BENCH_PREFIX") or "new"
local users, t0, slot, sent, answered, ack = {}, nil, 0, 0, 0, nil
function init(args)
  for line in io.lines(os.getenv("BENCH_USERS")) do users[#users + 1] = line end
  math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1"))
  ack = io.open(os.getenv("BENCH_ACK"), "a")
end
function delay()
  if t0 == nil then t0 = now_ms() end
  local due = t0 + slot * 1000.0 / rate
  slot = slot + 1
  if total > 0 and slot > total then return 3600000 end  -- nothing more to send
  local d = due - now_ms()
  return d > 0 and math.floor(d) or 0
end
local function gauss()
  return math.sqrt(-2 * math.log(1 - math.random())) * math.cos(2 * math.pi * math.random())
end
function request()
  sent = sent + 1
  local f = {}
  for i = 1, width do f[i] = string.format("%.4f", gauss()) end
  local u = {}
  for i = 1, 5 do u[i] = '"' .. users[math.random(#users)] .. '"' end
  local body = '{"id":"' .. prefix .. '-' .. sent .. '","features":[' .. table.concat(f, ",") ..
    '],"engaged_users":[' .. table.concat(u, ",") .. ']}'
  return wrk.format("POST", "/items", {["Content-Type"] = "application/json",
                                        ["Authorization"] = "Bearer " .. token}, body)
end
last_us = 0
function response(status, headers, body)
  answered = answered + 1
  last_us = math.floor((now_ms() - t0) * 1000)
  if status == 201 then
    ack:write(body:match('"id":"([^"]+)"') .. "\n")
    ack:flush()
  end
  if total > 0 and answered >= total then wrk.thread:stop() end
end
''' + WRK_SUMMARY


def load(args) -> None:
    import httpx

    art = Path(args.artifacts)
    ids = ids_of(art)
    n = len(ids)
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    rng = np.random.default_rng(0)
    ids_file = work / "ids.txt"
    ids_file.write_text("".join(ids[i] + "\n" for i in rng.choice(n, size=min(n, 200_000), replace=False)))
    users_all = np.load(art / "users.npz")["user_ids"]
    users_file = work / "users.txt"
    users_file.write_text("".join(f"{u}\n" for u in users_all[rng.choice(len(users_all), size=min(len(users_all), 50_000),
                                                                        replace=False)]))
    width = json.loads((art / "features.json").read_text())["width"]
    man = json.loads((art / "manifest.json").read_text())
    setup = {"index": man.get("index"), "neighbour_table_k": (man.get("neighbours") or {}).get("k")}
    log = work / "items.jsonl"
    srv = ServeProcess(art, log, threads=1)
    h = srv.start()
    rows = []
    try:
        print(f"server up in {srv.start_seconds:.1f}s: {h}", flush=True)
        Wrk(srv.url, 8, 10, work, ids=ids_file, max_requests=5000).start().result()  # warm-up (pages in)
        for clients in args.clients:
            c0 = cpu_seconds(srv.proc.pid)
            r = Wrk(srv.url, clients, args.seconds, work, ids=ids_file, max_requests=args.max_requests).start().result()
            row = _read_row(r, "GET /items/{id}/similar?k=10", n, clients, cpu_seconds(srv.proc.pid) - c0, setup)
            print(json.dumps(row), flush=True)
            rows.append(row)
        # reads (8 wrk connections) + POST /items at --write-rate/s (a second wrk), for --seconds
        ack = work / "acked.txt"
        total = int(args.write_rate * args.seconds)
        c0 = cpu_seconds(srv.proc.pid)
        reads = Wrk(srv.url, 8, args.seconds, work, ids=ids_file, max_requests=0).start()
        # (the writer may run 10 s past the reads to get the answers of the last due requests)
        writes = Wrk(srv.url, args.write_connections, args.seconds + 10, work, script=WRK_POST_SCRIPT, name="post",
                     rate=args.write_rate, total=total, width=width, token=TOKEN, users=users_file, ack=ack,
                     seed=int(time.time()), prefix=f"new{int(time.time())}").start()
        w_r, r = writes.result(), reads.result()
        server_cpu = cpu_seconds(srv.proc.pid) - c0
        mixed = _read_row(r, "GET /items/{id}/similar?k=10 (during POST /items)", n, 8, server_cpu, setup)
        # the server's CPU of this window includes the writes': not a per-read figure
        mixed["server_cpu_ms_per_request_incl_writes"] = mixed.pop("server_cpu_ms_per_request")
        mixed["server_cpu_share_reads_and_writes"] = mixed.pop("server_cpu_share")
        rows.append(mixed)
        acked = ack.read_text().split() if ack.is_file() else []
        w = _read_row(w_r, "POST /items", n, args.write_connections, server_cpu,
                      {"target_rate": args.write_rate, "max_requests": total})
        w["server_cpu_share_reads_and_writes"] = w.pop("server_cpu_share")
        del w["server_cpu_ms_per_request"]
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
    from app.retrieval import build_index, neighbour_table, save_index
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
    index = build_index(emb, "ivfpq")
    save_index(index, tmp / "index.faiss")
    t2 = time.perf_counter()
    np.save(tmp / "neighbours.npy", neighbour_table(index, emb, args.neighbours))  # as predict writes it
    nb_seconds = round(time.perf_counter() - t2, 1)
    del index
    manifest = {"dataset": "synthetic-load", "count": n, "dims": d, "index": "ivfpq", "checkpoint": None,
                "num_layers": 2, "num_neighbors": 10, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "config": {"note": build_index_folder.__doc__}, "index_build_seconds": round(t2 - t1, 1),
                "neighbours": {"file": "neighbours.npy", "k": args.neighbours, "seconds": nb_seconds},
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
    b.add_argument("--write-connections", type=int, default=64,
                   help="connections of the POST /items generator (>= rate x latency, for an open loop)")
    c = sub.add_parser("build-index")
    c.add_argument("--out", required=True)
    c.add_argument("--n", type=int, default=1_000_000)
    c.add_argument("--dims", type=int, default=64)
    c.add_argument("--hidden", type=int, default=128)
    c.add_argument("--features", type=int, default=16)
    c.add_argument("--users", type=int, default=100_000)
    c.add_argument("--edges", type=int, default=5_000_000)
    c.add_argument("--neighbours", type=int, default=50, help="top-K table (neighbours.npy), as predict's default")
    args = ap.parse_args()
    {"inductive": inductive, "load": load, "build-index": build_index_folder}[args.cmd](args)


if __name__ == "__main__":
    main()
