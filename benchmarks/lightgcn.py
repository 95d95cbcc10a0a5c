"""Train PyG's LightGCN (BPR) with Lightning under a wall-clock budget and score it in our evaluator.

    nice -n 10 python benchmarks/lightgcn.py --dataset movielens-100k --seeds 0 1 2 --budget-minutes 3
    nice -n 10 python benchmarks/lightgcn.py --dataset gowalla --seeds 0 --budget-minutes 20

Each seed trains :class:`models.lightgcn.LightGCNModule` on the training graph for at most
``--epochs`` epochs or ``--budget-minutes`` of wall clock (Lightning ``max_time``), whichever comes
first, then scores the user and item embeddings with :func:`app.evaluation.evaluate` (``full``
and ``ncf``: ``user . item`` dot products; ``item``: item-item dot products) on validation and
test. Rows (mean and std over the seeds) are merged into ``benchmarks/results/quality.json``;
the epochs reached and the validation Recall@20 go into ``benchmarks/results/lightgcn.json``.
No hyperparameter is tuned: the LightGCN paper's settings (d = 64, 3 layers, lr 1e-3 at batch
2048, lambda 1e-4), with a larger batch and the learning rate scaled with it (``--batch-size``,
``--lr``) so that the budget covers more epochs on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

import pytorch_lightning as pl  # noqa: E402

from app.evaluation import evaluate  # noqa: E402
from baselines import _atomic_json, _read, load, merge_rows  # noqa: E402
from machine import cpu_model  # noqa: E402
from models.lightgcn import BPRTriples, LightGCNModule  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "lightgcn.json"


def run(ds, seed: int, a) -> dict:
    pl.seed_everything(seed, workers=True)
    g = ds.train_graph
    m = LightGCNModule(ds.num_users, ds.num_items, embedding_dim=a.dim, num_layers=a.layers, lr=a.lr,
                       lambda_reg=a.reg)
    m.set_graph(g.user_ptr, g.user_items)
    data = BPRTriples(g.user_ptr, g.user_items, ds.num_items, seed=seed)
    dl = torch.utils.data.DataLoader(data, batch_size=a.batch_size, shuffle=True, num_workers=0,
                                     generator=torch.Generator().manual_seed(seed))
    trainer = pl.Trainer(max_epochs=a.epochs, max_time={"minutes": a.budget_minutes}, accelerator="cpu",
                         devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, reload_dataloaders_every_n_epochs=0)
    t0 = time.perf_counter()
    trainer.fit(m, dl)
    secs = time.perf_counter() - t0
    ue, ie = m.embeddings()
    val = evaluate(ds, ie, part="val", protocols=["full"], baselines=[], model_name="lightgcn", user_emb=ue)
    test = evaluate(ds, ie, part="test", protocols=a.protocols, baselines=[], model_name="lightgcn", user_emb=ue)
    print(f"seed {seed}: {trainer.current_epoch} epochs in {secs:.0f}s, val recall@20="
          f"{val['lightgcn/full/recall@20']:.4f}, test recall@20={test.get('lightgcn/full/recall@20', float('nan')):.4f}",
          flush=True)
    return {"seed": seed, "epochs": int(trainer.current_epoch), "train_seconds": secs,
            "val_recall@20": val["lightgcn/full/recall@20"], "test": test}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--budget-minutes", type=float, default=20.0)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--reg", type=float, default=1e-4)
    ap.add_argument("--protocols", nargs="+", default=["item", "ncf", "full"])
    a = ap.parse_args(argv)
    command = "python benchmarks/lightgcn.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    ds = load(a.dataset)
    runs = [run(ds, s, a) for s in a.seeds]
    keys = sorted(k for k in runs[0]["test"] if k.startswith("lightgcn/") and not k.endswith("seconds"))
    rows = []
    for k in keys:
        _, protocol, metric = k.split("/")
        v = np.array([r["test"][k] for r in runs])
        rows.append({"dataset": a.dataset, "model": "lightgcn", "protocol": protocol, "metric": metric,
                     "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                     "seeds": len(runs), "train_seconds": round(float(np.mean([r["train_seconds"] for r in runs])), 1),
                     "command": command})
    merge_rows(rows)
    rec = _read(OUT, {})
    rec[a.dataset] = {"settings": {k: v for k, v in vars(a).items() if k not in ("dataset", "protocols")},
                      "runs": [{k: v for k, v in r.items() if k != "test"} for r in runs],
                      "budget": f"min({a.epochs} epochs, {a.budget_minutes} min wall clock) per seed",
                      "machine": f"{cpu_model()}, 2 cores shared with other jobs", "command": command}
    _atomic_json(OUT, rec)


if __name__ == "__main__":
    main()
