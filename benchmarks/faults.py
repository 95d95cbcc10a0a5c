"""Faults a hostile but fair user hits, tried against the real CLI; writes
``benchmarks/results/faults.json`` (each fault, what happened, whether anything was lost).

    python benchmarks/faults.py [--out benchmarks/results/faults.json] [--work /tmp/pinsage-faults]
    python benchmarks/faults.py --only issue20   # issue 20's cases alone, merged into the JSON

issue 20's cases (a full disk under POST /items and fit, two fits into one folder, torn / modified
item logs, a huge body, a YAML bomb, a corrupt or stale cache, huge ids) are in
``benchmarks/faults_issue20.py``.

Runs on a tiny synthetic graph (configs/synthetic.yaml + overrides), so it takes minutes on 2 cores.
kill -9 faults use real child processes (``python -m app.cli``); the rest run in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")

READER = {"num_users": 300, "num_items": 400, "num_interactions": 5000, "num_communities": 5, "feature_dim": 8, "seed": 0}


def tiny(work: Path, root: str) -> list:
    return ["--config", str(ROOT / "configs" / "synthetic.yaml"), "--data.reader_args", json.dumps(READER),
            "--data.batch_size=64", "--data.num_neighbors=5", "--data.num_walks=10", "--data.num_easy_negatives=40",
            "--data.max_hard_negatives=1", "--data.num_workers=0", f"--data.cache_dir={work / 'cache'}",
            "--model.hidden_channels=32", "--model.out_channels=16", "--model.lr=0.08",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={work / root}"]


def run_cli(argv) -> tuple:
    """``(exit code, stdout, stderr)`` of ``pinsage <argv>`` in this process."""
    from app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def run_recommend(argv) -> tuple:
    from app.recommend_command import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def child(argv, env=None) -> subprocess.Popen:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "app.cli", *argv], env=e, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(cond, proc, timeout=1800.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def weights(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True, map_location="cpu")["state_dict"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    ap.add_argument("--work", default="/tmp/pinsage-faults")
    ap.add_argument("--only", choices=["issue20"], default=None,
                    help="run only these cases and merge their rows into --out (others kept)")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["PINSAGE_CACHE"] = str(work / "cache")
    rows = []

    def record(fault, result, ok, detail, lost="nothing"):
        rows.append({"fault": fault, "result": result, "ok": bool(ok), "lost": lost, "detail": detail})
        print(f"[{'ok' if ok else 'FAIL'}] {fault}: {result} -- {detail[:160]}", file=sys.stderr, flush=True)

    t0 = time.time()
    # -- the reference run: 3 epochs uninterrupted --------------------------------------------
    code, _, err = run_cli(["fit", *tiny(work, "ref"), "--trainer.max_epochs=3"])
    assert code == 0, err[-2000:]
    ref_last = work / "ref" / "checkpoints" / "last.ckpt"
    import torch

    ck = torch.load(ref_last, weights_only=True)
    record("fit 3 epochs: last.ckpt", "last completed epoch", ck["epoch"] == 2, f"last.ckpt epoch {ck['epoch']} (0-based)")
    if a.only:
        art = work / "art"
        code, _, err = run_cli(["predict", *tiny(work, "p"), "--ckpt_path", str(ref_last), "--artifacts.output_dir",
                                str(art), "--artifacts.index", "exact"])
        assert code == 0, err[-2000:]
        import faults_issue20

        faults_issue20.run(work, record, tiny, ref_last, art, run_cli)
        return write_result(a, rows, t0, merge=True)

    # -- kill -9 during fit, then resume --------------------------------------------------------
    kdir = work / "killed-fit"
    proc = child(["fit", *tiny(work, "killed-fit"), "--trainer.max_epochs=3"])
    seen = wait_for(lambda: (kdir / "checkpoints" / "last.ckpt").is_file(), proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in (kdir / "checkpoints").iterdir()) if (kdir / "checkpoints").is_dir() else []
    epoch = torch.load(kdir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] if seen else None
    code, _, err = run_cli(["fit", *tiny(work, "killed-fit"), "--trainer.max_epochs=3",
                            "--ckpt_path", str(kdir / "checkpoints" / "last.ckpt")])
    same = code == 0 and all(torch.equal(v, weights(kdir / "checkpoints" / "last.ckpt")[k])
                             for k, v in weights(ref_last).items())
    record("kill -9 during fit (after epoch %s's checkpoint), resume from last.ckpt" % epoch,
           "recovered: resumed run bit-identical to the uninterrupted one" if same else "NOT identical",
           same, f"files left by the killed run: {left}; resume exit {code}; torch.equal on every tensor: {same}")

    # -- bad checkpoints -------------------------------------------------------------------------
    bad = work / "bad"
    bad.mkdir()
    data = ref_last.read_bytes()
    (bad / "empty.ckpt").write_bytes(b"")
    (bad / "garbage.ckpt").write_bytes(os.urandom(4096))
    (bad / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    torch.save({"epoch": 1}, bad / "foreign.ckpt")
    for name in ("empty", "garbage", "truncated", "foreign"):
        for cmd in ("fit", "test", "predict"):
            extra = ["--artifacts.output_dir", str(work / "never")] if cmd == "predict" else []
            code, _, err = run_cli([cmd, *tiny(work, "bad-run"), "--ckpt_path", str(bad / f"{name}.ckpt"), *extra])
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            ok = code == 2 and len(lines) == 1 and str(bad / f"{name}.ckpt") in lines[0]
            record(f"{name} checkpoint to {cmd}", "clear error" if ok else "NOT one clear line", ok, one_line(err))

    # -- predict and its output folder -------------------------------------------------------------
    art = work / "art"
    code, _, err = run_cli(["predict", *tiny(work, "p"), "--ckpt_path", str(ref_last), "--artifacts.output_dir", str(art)])
    assert code == 0, err[-2000:]
    digest = {p.name: p.read_bytes() for p in art.iterdir()}
    run = work / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ref_last, run / "checkpoints" / "last.ckpt")
    (run / "NOTES.txt").write_text("notes\n")
    code, _, err = run_cli(["predict", *tiny(work, "p"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                            "--artifacts.output_dir", str(run)])
    kept = (run / "NOTES.txt").is_file() and (run / "checkpoints" / "last.ckpt").read_bytes() == data
    record("predict --artifacts.output_dir <a run folder with a checkpoint and notes>",
           "clear error" if code == 2 and kept else "LOST FILES", code == 2 and kept, one_line(err),
           "nothing" if kept else "the folder's files")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        t = time.time()
        code, _, err = run_cli(["predict", *tiny(work, "p"), "--ckpt_path", str(ref_last), "--artifacts.output_dir", "."])
        record("predict --artifacts.output_dir .", "clear error, before any work", code == 2,
               f"{one_line(err)} ({time.time() - t:.1f}s)")
    finally:
        os.chdir(cwd)

    # kill -9 during predict: the old set stays whole, the next run cleans the temp folder
    proc = child(["predict", *tiny(work, "p"), "--ckpt_path", str(ref_last), "--artifacts.output_dir", str(art)])
    started = wait_for(lambda: any(p.name.endswith(".tmp") for p in work.glob(".art.*")), proc)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    temps = sorted(p.name for p in work.glob(".art.*"))
    intact = {p.name: p.read_bytes() for p in art.iterdir()} == digest
    code, _, _ = run_recommend(["--artifacts", str(art), "--item", "3", "--json"])
    record("kill -9 during predict (temp folder being written)", "old artifacts intact" if intact else "DAMAGED",
           intact and started and code == 0, f"temp left: {temps}; old set byte-identical: {intact}; recommend exit {code}")
    code, _, err = run_cli(["predict", *tiny(work, "p"), "--ckpt_path", str(ref_last), "--artifacts.output_dir", str(art)])
    after = sorted(p.name for p in work.glob(".art.*"))
    record("next predict after the kill", "recovered: stale temp removed, new set written",
           code == 0 and not after, f"exit {code}; temp folders now: {after}; " + (err.strip().splitlines() or [""])[0])

    # -- damaged artifacts to recommend ------------------------------------------------------------
    def damaged(name, fn, query=("--item", "3")):
        d = work / f"art-{name}"
        shutil.copytree(art, d)
        fn(d)
        code, _, err = run_recommend(["--artifacts", str(d), *query])
        record(f"recommend on artifacts with {name}", "clear error" if code == 2 else "NOT refused", code == 2, one_line(err))

    def truncate(f):
        return lambda d: (d / f).write_bytes((d / f).read_bytes()[: (d / f).stat().st_size // 2])

    def flip(d):
        b = bytearray((d / "index.faiss").read_bytes())
        for k in range(len(b) // 2, len(b) // 2 + 64):
            b[k] ^= 0xFF
        (d / "index.faiss").write_bytes(bytes(b))

    damaged("truncated users.npz (--user query)", truncate("users.npz"), ("--user", "0"))
    damaged("truncated embeddings.npy", truncate("embeddings.npy"))
    damaged("flipped bytes in index.faiss", flip)
    damaged("manifest.json not JSON", lambda d: (d / "manifest.json").write_text("{oops"))
    damaged("manifest.json without count", lambda d: (d / "manifest.json").write_text('{"dims": 16}'))
    damaged("items.csv truncated", truncate("items.csv"))

    # -- bad input files ---------------------------------------------------------------------------
    own = work / "own"
    own.mkdir()
    (own / "log.tsv").write_text("user_id\titem_id\tcount\n" + "".join(f"{u}\t{u % 7}\t1\n" for u in range(50)))
    (own / "short.csv").write_text("user,item\n" + "".join(f"{u},{(u + k) % 9}\n" for u in range(40) for k in range(2)))
    (own / "ids.csv").write_text("user,item\n" + "".join(f"u{u},{i}\n" for u in range(10) for i in ("07", "7", "011", "x", "y", "z")))

    def data_cmd(*args):
        from app.data_command import main as data_main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = data_main(["--data.dataset=table", f"--data.root={own}", "--data.features=[log_degree]",
                                  f"--data.cache_dir={work / 'cache'}", *args])
            except SystemExit as e:
                code = e.code
        return code, out.getvalue(), err.getvalue()

    code, _, err = data_cmd("--data.reader_args", json.dumps({"path": "log.tsv", "user_col": "user_id", "item_col": "item_id"}))
    record("tab-separated log read with the default sep", "clear error naming the fix", code == 2 and "set sep" in err, one_line(err))
    code, out, err = data_cmd("--data.reader_args", json.dumps({"path": "ids.csv", "id_type": "str"}))
    s = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
    record("string ids 07 / 7 / 011 with id_type: str", "kept byte for byte",
           s.get("num_items") == 6 and s.get("num_duplicates_dropped") == 0, json.dumps(s)[:200])
    code, out, err = data_cmd("--data.reader_args", json.dumps({"path": "short.csv"}))
    record("pinsage data, every user < 3 interactions", "warning", code == 0 and "warning" in err, one_line(err))
    code, _, err = run_cli(["fit", *tiny(work, "short"), "--data.dataset=table", f"--data.root={own}",
                            "--data.reader_args", json.dumps({"path": "short.csv"}), "--data.features=[log_degree]"])
    record("pinsage fit, every user < 3 interactions", "clear error, up front", code == 2, one_line(err))
    code, _, err = run_cli(["fit", *tiny(work, "u"), "--model.no_such_key=1"])
    record("unknown config key", "clear error", code == 2 and "no_such_key" in one_line(err), one_line(err))

    # -- kill -9 during the dataset cache build (cache code: issue 9) -----------------------------
    big = {**READER, "num_users": 20000, "num_items": 5000, "num_interactions": 600000}
    cache2 = work / "cache2"
    argv = ["data", "--data.dataset=synthetic", "--data.reader_args", json.dumps(big), f"--data.cache_dir={cache2}"]
    proc = child(argv)
    wait_for(lambda: cache2.is_dir(), proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in cache2.rglob("*")) if cache2.is_dir() else []
    r = subprocess.run([sys.executable, "-m", "app.cli", *argv], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    record("kill -9 during the dataset cache build, then pinsage data again", "recovered" if r.returncode == 0 else "FAILED",
           r.returncode == 0, f"left by the killed run: {left[:6]}; rerun exit {r.returncode}")

    import faults_issue20

    faults_issue20.run(work, record, tiny, ref_last, art, run_cli)
    return write_result(a, rows, t0)


def write_result(a, rows, t0, merge: bool = False) -> int:
    """Write ``faults.json``; with ``merge``, rows of the other faults already in it are kept."""
    old = []
    if merge and Path(a.out).is_file():
        names = {r["fault"] for r in rows}
        old = [r for r in json.loads(Path(a.out).read_text())["faults"] if r["fault"] not in names]
    allrows = old + rows
    result = {"command": "python benchmarks/faults.py" + (f" --only {a.only}" if a.only else ""),
              "seconds": round(time.time() - t0, 1),
              "machine": f"{os.cpu_count()}-core VM; load average at the end {os.getloadavg()[0]:.1f}",
              "all_ok": all(r["ok"] for r in allrows),
              "summary": {"faults": len(allrows), "ok": sum(r["ok"] for r in allrows),
                          "data_lost": sum(r["lost"] != "nothing" for r in allrows),
                          "not_ok": [r["fault"] for r in allrows if not r["ok"]]},
              "faults": allrows}
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, a.out)
    print(json.dumps({"faults": len(allrows), "ok": sum(r["ok"] for r in allrows)}))
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
