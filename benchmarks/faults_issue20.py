"""The faults of issue 20, tried against the real CLI and server (called by ``benchmarks/faults.py``):
a disk that fills up under ``POST /items`` and under ``fit``, two fits into one folder, a torn and a
modified item log, a huge body, a YAML alias bomb, a corrupt / stale dataset cache, huge ids and
features.  Each row says what happened and what was lost; a "full disk" is ``RLIMIT_FSIZE`` on the
child process (writes past the limit fail part-way, as on a full disk, without needing root)."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "faults-token"


def _limited(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**kw):
    return {**os.environ, "PYTHONPATH": str(ROOT), "PINSAGE_SERVE_TOKEN": TOKEN, **kw}


def _serve(art: Path, log: Path, port: int, *extra, preexec=None) -> subprocess.Popen:
    import httpx

    p = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--artifacts", str(art), "--port", str(port),
                          "--log", str(log), *extra], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         preexec_fn=preexec)
    for _ in range(1200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if p.poll() is not None:
            raise RuntimeError(p.stderr.read().decode()[-2000:])
        time.sleep(0.1)
    p.kill()
    raise RuntimeError("server did not start")


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(30)


def _stderr_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run(work: Path, record, tiny, ref_last: Path, art: Path, run_cli) -> None:
    import httpx
    import numpy as np

    width = json.loads((art / "features.json").read_text())["width"]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    # -- 1: the disk fills while POST /items writes the log -------------------------------------
    log = work / "full.items.jsonl"
    port = _port()
    srv = _serve(art, log, port, preexec=_limited(12_000))
    acked, answers = [], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=60) as c:
            for i in range(40):
                r = c.post("/items", json={"id": f"F-{i}", "features": [0.01 * i] * width})
                answers.append(r.status_code)
                if r.status_code == 201:
                    acked.append(f"F-{i}")
    finally:
        _kill(srv)
    torn = log.is_file() and log.stat().st_size and not log.read_bytes().endswith(b"\n")
    srv = _serve(art, log, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            back = [i for i in acked if c.get(f"/items/{i}/similar", params={"k": 3}).status_code == 200]
            stored = c.get("/healthz").json()["replayed"]["stored"]
    finally:
        srv.terminate()
        srv.wait(30)
    lost = sorted(set(acked) - set(back))
    ok = not lost and not torn and 507 in answers and stored == len(acked)
    record("disk fills during POST /items (log limited to 12 kB), then kill -9 and restart",
           "acknowledged items all back; the rest answered 507" if ok else "LOST OR TORN", ok,
           f"201: {len(acked)}, 507: {answers.count(507)}, other: {[a for a in answers if a not in (201, 507)]}; "
           f"after kill -9 + restart stored {stored}, lost {lost}; torn last line: {bool(torn)}",
           "nothing" if not lost else f"{len(lost)} acknowledged items")

    # -- 8: a modified / torn item log ---------------------------------------------------------
    lines = log.read_bytes().split(b"\n")
    bad = work / "modified.items.jsonl"
    rec = lines[0]
    k = rec.index(b'"z":[') + 6
    digit = next(j for j in range(k, len(rec)) if rec[j:j + 1].isdigit())
    changed = rec[:digit] + (b"1" if rec[digit:digit + 1] != b"1" else b"2") + rec[digit + 1:]
    bad.write_bytes(b"\n".join([changed] + lines[1:]))
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--artifacts", str(art), "--log", str(bad),
                        "--port", str(_port())], env=_env(), capture_output=True, text=True, timeout=900)
    ok = r.returncode == 2 and "checksum" in _stderr_line(r.stderr) and "Traceback" not in r.stderr
    record("item log line with one vector digit changed", "refused at start, line named" if ok else "REPLAYED SILENTLY",
           ok, _stderr_line(r.stderr))
    torn_log = work / "torn.items.jsonl"
    torn_log.write_bytes(log.read_bytes() + b'{"artifacts": "x", "item": {"id": "T"')
    srv = _serve(art, torn_log, port)
    try:
        h = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()
    finally:
        srv.terminate()
        srv.wait(30)
    ok = h["replayed"]["stored"] == len(acked) and torn_log.read_bytes().endswith(b"\n")
    record("torn last line of the item log (killed mid-write)", "ignored and cut; every whole record replayed" if ok
           else "NOT RECOVERED", ok, f"replayed {h['replayed']}")

    # -- 11: a huge body to a read-only server; 6/7: hostile content ---------------------------
    srv = _serve(art, work / "ro.items.jsonl", port, "--read-only")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            body = b'{"history": [' + b",".join([b'"1"'] * 5_000_000) + b'], "k": 10}'
            t = time.time()
            r = c.post("/recommendations", content=body, headers={"content-type": "application/json"})
            secs = time.time() - t
            status, msg = r.status_code, r.json().get("error", "")
            rss = int(open(f"/proc/{srv.pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024
            hist = c.post("/recommendations", json={"history": ["1"] * 20_000})
            flags = [c.post("/recommendations", json={"history": [v]}).status_code for v in (True, 1.0)]
    finally:
        srv.terminate()
        srv.wait(30)
    ok = status == 413 and secs < 10 and hist.status_code == 422
    record(f"POST /recommendations with a {len(body) >> 20} MB body (read-only server)",
           "413 at once, memory bounded" if ok else "NOT LIMITED", ok,
           f"{status} in {secs:.2f}s, server RSS {rss} MB: {msg[:120]}; 20,000-item history: {hist.status_code}")
    record("history holding true / 1.0", "422 (not read as item 1)" if flags == [422, 422] else "MISREAD",
           flags == [422, 422], f"statuses {flags}")
    srv = _serve(art, work / "hostile.items.jsonl", port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=60) as c:
            huge = c.post("/items", json={"id": "huge", "features": [1e308] * width})
            slash = c.post("/items", json={"id": "a/b", "features": [0.1] * width})
    finally:
        srv.terminate()
        srv.wait(30)
    ok = huge.status_code == 422 and slash.status_code == 422
    record("POST /items with features 1e308, and with an id holding '/'", "422, nothing logged" if ok else "ACCEPTED",
           ok, f"{huge.status_code}: {huge.json().get('error', '')[:100]}; {slash.status_code}")

    # -- 12: a YAML alias bomb ------------------------------------------------------------------
    bomb = work / "bomb.yaml"
    rows = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, 10)]
    bomb.write_text("\n".join(rows) + "\ndata:\n  dataset: synthetic\n  reader_args:\n    x: *a9\n")
    for cmd in ("data", "fit"):
        t = time.time()
        try:
            r = subprocess.run([sys.executable, "-m", "app.cli", cmd, "--config", str(bomb)], env=_env(),
                               capture_output=True, text=True, timeout=90)
            code, line = r.returncode, _stderr_line(r.stderr)
        except subprocess.TimeoutExpired:
            code, line = None, "still running after 90 s"
        ok = code == 2 and "aliases" in line
        record(f"billion-laughs YAML config to pinsage {cmd}", "clear error at once" if ok else "HANGS", ok,
               f"{line[:160]} ({time.time() - t:.1f}s)")

    # -- 2: two fits into one folder -------------------------------------------------------------
    both = work / "both"
    first = subprocess.Popen([sys.executable, "-m", "app.cli", "fit", *tiny(work, "both"), "--trainer.max_epochs=400"],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(6000):
        if (both / "checkpoints" / "last.ckpt").is_file() or first.poll() is not None:
            break
        time.sleep(0.1)
    r = subprocess.run([sys.executable, "-m", "app.cli", "fit", *tiny(work, "both"), "--trainer.max_epochs=2"],
                       env=_env(), capture_output=True, text=True, timeout=900)
    running = first.poll() is None  # the first was still training when the second was refused
    _kill(first)
    ok = r.returncode == 2 and "another `pinsage fit`" in _stderr_line(r.stderr) and running
    record("a second pinsage fit into a folder a first one is training into", "second refused up front"
           if ok else "MIXED", ok, f"second exit {r.returncode}: {_stderr_line(r.stderr)[:160]}; first still "
           f"training then: {running} (killed after)")

    # -- 13: the disk fills while fit writes a checkpoint ------------------------------------------
    full = work / "fullfit"
    r = subprocess.run([sys.executable, "-m", "app.cli", "fit", *tiny(work, "fullfit"), "--trainer.max_epochs=1"],
                       env=_env(), capture_output=True, text=True, timeout=900,
                       preexec_fn=_limited(ref_last.stat().st_size // 2))
    left = sorted(p.name for p in (full / "checkpoints").iterdir()) if (full / "checkpoints").is_dir() else []
    ok = r.returncode == 1 and "Traceback" not in r.stderr and not [n for n in left if n.endswith(".ckpt") or ".tmp" in n]
    record("disk fills while fit writes its first checkpoint", "one line, no truncated checkpoint" if ok else
           "TRACEBACK OR TRUNCATED FILE", ok, f"exit {r.returncode}: {_stderr_line(r.stderr)[:160]}; left {left}")

    # -- 3/4: a stale or corrupt dataset cache -----------------------------------------------------
    from datamodules.datasets import load_dataset

    own = work / "big-log"
    own.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    u, i = rng.integers(100, 999, 300_000), rng.integers(100, 999, 300_000)
    f = own / "log.csv"
    f.write_text("user,item\n" + "".join(f"{a},{b}\n" for a, b in zip(u.tolist(), i.tolist())))
    args = dict(path="log.csv", user_col="user", item_col="item")
    a = load_dataset("table", root=str(own), cache_dir=str(work / "cache3"), reader_args=args)
    data = bytearray(f.read_bytes())
    mid = data.index(b"\n", len(data) // 2) + 1
    data[mid:mid + 3] = b"099"
    time.sleep(0.01)
    f.write_bytes(bytes(data))
    b = load_dataset("table", root=str(own), cache_dir=str(work / "cache3"), reader_args=args)
    ok = b.num_users == a.num_users + 1
    record(f"same-size edit in the middle of a {len(data) >> 20} MB log (one user id changed)",
           "cache rebuilt" if ok else "STALE CACHE USED", ok, f"users {a.num_users} -> {b.num_users}")
    (folder,) = [p for p in (work / "cache3").glob("table-*") if p.is_dir() and p.stat().st_mtime ==
                 max(q.stat().st_mtime for q in (work / "cache3").glob("table-*"))]
    man = json.loads((folder / "manifest.json").read_text())["arrays"]
    name = max(man, key=lambda k: man[k]["bytes"])
    arr = folder / f"{name}.npy"
    raw = bytearray(arr.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    arr.write_bytes(bytes(raw))
    r = subprocess.run([sys.executable, "-m", "app.cli", "data", "--data.dataset=table", f"--data.root={own}",
                        f"--data.cache_dir={work / 'cache3'}", "--data.reader_args", json.dumps(args)],
                       env=_env(), capture_output=True, text=True, timeout=900)
    ok = r.returncode == 0 and "unusable" in r.stderr and arr.name in r.stderr
    record(f"one flipped bit in the middle of a cached array ({name}, {len(raw) >> 20} MB)",
           "noticed, rebuilt" if ok else "USED SILENTLY", ok,
           next((ln for ln in r.stderr.splitlines() if "unusable" in ln), _stderr_line(r.stderr))[:200])

    # -- 5: integer ids past 2^64 --------------------------------------------------------------------
    ids = work / "ids"
    ids.mkdir(exist_ok=True)
    (ids / "log.csv").write_text("user,item\n18446744073709551616,1\n18446744073709551617,2\n" +
                                 "".join(f"{k},{k % 5}\n" for k in range(30)))
    r = subprocess.run([sys.executable, "-m", "app.cli", "data", "--data.dataset=table", f"--data.root={ids}",
                        f"--data.cache_dir={work / 'cache4'}", "--data.reader_args", '{"path": "log.csv"}'],
                       env=_env(), capture_output=True, text=True, timeout=900)
    ok = r.returncode == 2 and "too large" in _stderr_line(r.stderr)
    record("integer user ids >= 2^64", "refused, id_type: str named" if ok else "MERGED", ok, _stderr_line(r.stderr)[:200])
