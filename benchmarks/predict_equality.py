"""Same artifacts from two source trees: ``pinsage predict`` run with an older tree (``--baseline-src``,
e.g. ``git archive <commit>`` unpacked) and with this one, on the same checkpoint and dataset cache,
then the two folders compared file by file (issue 19 item 3: predict's memory work must not change
what it writes).

    python benchmarks/predict_equality.py --baseline-src /tmp/main-src --config configs/movielens-100k.yaml \\
        --work /tmp/eq-ml100k --data-root ../shared/data

Compared: the file list; ``.npy`` files byte for byte; ``.npz`` archives member by member, byte for
byte (the archives' own bytes differ by the zip entries' timestamps); ``index.faiss`` byte for byte;
``model.pt`` tensor by tensor; ``metrics.json`` without its timings; the other files byte for
byte; ``manifest.json`` without ``created``, timings, the output folder and those three's checksums.
Prints one JSON line; exit 1 on any difference.  The checkpoint comes from a short ``pinsage fit`` with this tree (``--fit-args``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _run(src: Path, argv, log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(src), WANDB_MODE="disabled")
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "app.cli", *argv], cwd=src, env=env, stdout=f, stderr=f)
    if code:
        raise SystemExit(f"{' '.join(argv[:1])} with {src} failed ({code}); see {log}")


def _manifest(path: Path) -> dict:
    """The manifest less what differs between any two runs: ``created``, timings, the output folder, the
    checksums of the ``.npz`` archives (zip timestamps) and of ``metrics.json`` (its timings)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("created", "output_dir", "seconds")}
        return [strip(x) for x in v] if isinstance(v, list) else v

    man = strip(json.loads(path.read_text()))
    man["checksums"] = {k: v for k, v in man.get("checksums", {}).items()
                        if not (k.endswith(".npz") or k == "metrics.json")}
    return man


def _metrics(path: Path) -> dict:
    """``metrics.json`` less its timings (``*seconds``)."""
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.endswith("seconds")}


def compare(a: Path, b: Path) -> list:
    """The differences between two artifact folders (empty: the same artifacts)."""
    import torch

    diffs = []
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return [f"file lists differ: {names} vs {sorted(p.name for p in b.iterdir())}"]
    for name in names:
        pa, pb = a / name, b / name
        if name == "manifest.json":
            if _manifest(pa) != _manifest(pb):
                diffs.append(name)
        elif name == "metrics.json":
            if _metrics(pa) != _metrics(pb):
                diffs.append(name)
        elif name.endswith(".npz"):
            with zipfile.ZipFile(pa) as za, zipfile.ZipFile(pb) as zb:
                if za.namelist() != zb.namelist():
                    diffs.append(f"{name}: members {za.namelist()} vs {zb.namelist()}")
                diffs += [f"{name}:{m}" for m in za.namelist() if m in zb.namelist() and za.read(m) != zb.read(m)]
        elif name == "model.pt":
            sa, sb = (torch.load(p, weights_only=True)["state_dict"] for p in (pa, pb))
            if sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa):
                diffs.append(name)
        elif pa.read_bytes() != pb.read_bytes():
            diffs.append(name)
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-src", required=True, help="the older source tree")
    ap.add_argument("--config", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--fit-args", default="--trainer.max_epochs 1 --trainer.limit_train_batches 10 "
                                          "--trainer.limit_val_batches 0 --trainer.logger false")
    ap.add_argument("--predict-args", default="")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = ["--config", str(Path(args.config).resolve()), "--data.cache_dir", str(work / "cache")]
    if args.data_root:
        common += ["--data.root", str(Path(args.data_root).resolve())]
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        _run(ROOT, ["fit", *common, "--trainer.default_root_dir", str(work / "run"), *args.fit_args.split()],
             work / "fit.log")
    out = {}
    for label, src in (("baseline", Path(args.baseline_src).resolve()), ("this", ROOT)):
        _run(src, ["predict", *common, "--ckpt_path", str(ckpt), "--artifacts.output_dir", str(work / label),
                   *args.predict_args.split()], work / f"predict-{label}.log")
    diffs = compare(work / "baseline", work / "this")
    out = {"config": args.config, "files": sorted(p.name for p in (work / "this").iterdir()), "differences": diffs}
    print(json.dumps(out))
    raise SystemExit(1 if diffs else 0)


if __name__ == "__main__":
    main()
