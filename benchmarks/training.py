"""Benchmark: training throughput (positive pairs/s), ours vs DGL's PinSAGE example, MovieLens-100K.

    PINSAGE_CACHE=/tmp/pcache python benchmarks/training.py --dgl-dir /tmp/dgl-pinsage \\
        --dgl-python /tmp/dglvenv/bin/python [--batch-sizes 512 1024] [--workers 2 0] \\
        [--steps 40] [--warmup 5] [--profile] [--out benchmarks/results/training.json]

Ours: :class:`models.module.PinSageModule` + :class:`datamodules.datamodule.PinSageDataModule`
with the settings of ``configs/data/movielens-100k.yaml`` and ``configs/model/pinsage.yaml``
(only ``batch_size`` / ``num_workers`` overridden) on a plain ``pytorch_lightning.Trainer``
(``max_steps = warmup + steps``, no validation, no logger, no checkpoints). A callback stamps
``on_train_batch_start`` / ``on_train_batch_end``; after ``--warmup`` steps:

* pairs/s = positive pairs (``batch.query.numel()``) of the measured steps / their wall time
  (from the end of the last warm-up step to the end of the last step);
* data-wait share = sum over steps of (``on_train_batch_start`` - previous
  ``on_train_batch_end``) / that wall time. Lightning fetches the next batch in that gap, so the
  gap is the time the loop waits for data (plus Lightning's own per-step bookkeeping).

The first epoch of the hard-negative curriculum uses 0 hard negatives per query; rows with
``hard_negatives_per_pair = 6`` start the sampler at epoch 6 (the cap), i.e. the steady state
of a full run (``--hard-epoch``).

DGL: its example (``examples/pytorch/pinsage`` of dmlc/dgl, fetched to ``--dgl-dir`` and never
part of this project) trains through its own ``model.py`` in its own venv, wrapped by
``bench_dgl.py`` (written into ``--dgl-dir`` by ``--setup-dgl``, with a torchtext shim and the
MovieLens-100K prep script, see ``DGL_HARNESS``) that times its DataLoader's ``next()`` and its
training loop steps without changing them; it is given the same model width, layers, T, walks and batch size.
Ours and DGL runs alternate (ours, DGL, ours, ...) so both see the same machine load; the load
average is recorded. Each measurement is a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
DATASET = "movielens-100k"


def _train_step(mod, batch, opt) -> None:
    """One optimiser step of the model's minibatch path (forward, loss, backward, step)."""
    z = mod.model(batch.x, batch.node_ids, batch.blocks)
    z_hard = z[batch.hard_neg] if batch.hard_neg.numel() else None
    z_easy = z[batch.easy_neg] if batch.easy_neg.numel() else None
    loss, _ = mod.loss_fn(z[batch.query], z[batch.pos], z_easy, z_hard)
    opt.zero_grad()
    loss.backward()
    opt.step()

def _yaml(path: Path) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def _settings() -> tuple:
    data = _yaml(ROOT / "configs" / "data" / f"{DATASET}.yaml")
    model = _yaml(ROOT / "configs" / "model" / "pinsage.yaml")
    root = data.get("root", "data")
    data["root"] = str((ROOT / root).resolve()) if not os.path.isabs(root) else root
    return data, model


# ----------------------------------------------------------------------------------------------
# ours: one measurement per subprocess (--ours-worker)
# ----------------------------------------------------------------------------------------------


def _build(batch_size: int, num_workers: int, hard_epoch: int):
    from datamodules.datamodule import PinSageDataModule
    from models.module import PinSageModule

    data, model = _settings()
    data.update(batch_size=batch_size, num_workers=num_workers)

    class OffsetEpochDataModule(PinSageDataModule):
        """Starts the training sampler ``hard_epoch`` epochs in (hard-negative curriculum)."""

        def train_dataloader(self):
            dl = super().train_dataloader()
            s = self._train_sampler
            orig = s.set_epoch
            s.set_epoch = lambda e: orig(int(e) + hard_epoch)
            s.set_epoch(0)
            return dl

    dm = OffsetEpochDataModule(**data)
    dm.setup("fit")
    mod = PinSageModule(in_channels=dm.num_features, num_items=dm.num_items, num_users=dm.num_users,
                        num_layers=dm.num_layers, **model)
    return dm, mod


def ours_worker(batch_size: int, num_workers: int, steps: int, warmup: int, hard_epoch: int,
                profile: str = "") -> dict:
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import pytorch_lightning as pl
    import torch

    dm, mod = _build(batch_size, num_workers, hard_epoch)

    class Timer(pl.Callback):
        def __init__(self):
            self.start, self.end, self.pairs, self.negs = [], [], [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end.append(time.perf_counter())
            self.pairs.append(int(batch.query.numel()))
            h = int(batch.hard_neg.shape[1]) if batch.hard_neg.dim() == 2 else 0
            self.negs.append((int(batch.easy_neg.numel()), h))

    timer = Timer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, max_epochs=-1,
                         limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[timer])
    trainer.fit(mod, datamodule=dm)
    w = warmup
    t0 = timer.end[w - 1]
    elapsed = timer.end[-1] - t0
    wait = sum(timer.start[i] - timer.end[i - 1] for i in range(w, len(timer.start)))
    n = len(timer.start) - w
    pairs = sum(timer.pairs[w:])
    easy, hard = timer.negs[-1]
    res = {"steps": n, "elapsed_s": elapsed, "pairs": pairs, "pairs_per_s": pairs / elapsed,
           "steps_per_s": n / elapsed, "data_wait_s": wait, "data_wait_share": wait / elapsed,
           "easy_negatives_per_pair": easy, "hard_negatives_per_pair": hard,
           "params": sum(p.numel() for p in mod.parameters()), "torch_threads": torch.get_num_threads(),
           "hidden": mod.hparams.hidden_channels, "out": mod.hparams.out_channels,
           "in_channels": dm.num_features}
    if profile:
        res["profile"] = _profile_step(mod, dm, profile)
    return res


def _profile_step(mod, dm, out_txt: str) -> dict:
    """Per-step split: batch build (in-process, as a worker does it) vs forward/backward/optimiser,
    plus the torch.profiler op table of the model step (written to ``out_txt``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    data = dm.train_dataset()
    sampler = dm._train_sampler
    idx = next(iter(sampler))
    opt = torch.optim.Adam(mod.parameters(), lr=1e-3)
    mod.train()
    t = {"batch_build_s": [], "forward_s": [], "backward_s": [], "optimizer_s": []}
    for rep in range(4):
        t0 = time.perf_counter()
        batch = data[idx]
        t1 = time.perf_counter()
        z = mod.model(batch.x, batch.node_ids, batch.blocks)
        z_hard = z[batch.hard_neg] if batch.hard_neg.numel() else None
        z_easy = z[batch.easy_neg] if batch.easy_neg.numel() else None
        loss, _ = mod.loss_fn(z[batch.query], z[batch.pos], z_easy, z_hard)
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if rep:
            for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                t[k].append(v)
    sizes = {"n_nodes_layer0": int(batch.x.shape[0]), "x_dim": int(batch.x.shape[1]),
             "edges_per_block": [int(b.edge_index.shape[1]) for b in batch.blocks],
             "block_sizes": [list(map(int, b.size)) for b in batch.blocks]}
    reps = 3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            _train_step(mod, batch, opt)
    ka = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ka) or 1.0
    top_ops = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3 / reps, 2), "calls": e.count // reps,
                "share": round(e.self_cpu_time_total / total, 3)} for e in ka[:12]]
    if out_txt:
        Path(out_txt).write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
    return {**{k: round(v, 4) for k, v in med.items()}, **sizes, "top_ops_one_step": top_ops}


# ----------------------------------------------------------------------------------------------
# --setup-dgl: the harness written next to DGL's example in the temp folder (our code; none of
# DGL's files is copied into this project)
# ----------------------------------------------------------------------------------------------

DGL_HARNESS = {
    'shims/torchtext/__init__.py': r'''"""Minimal stand-in for the three torchtext helpers DGL's PinSAGE example uses (torchtext has no
wheel for torch 2.13). Same semantics: get_tokenizer(None) == str.split; vocab indices in order of
specials then descending frequency (ties by first appearance); numericalize maps tokens to ids."""
''',
    'shims/torchtext/data/utils.py': r'''def get_tokenizer(tokenizer=None, language="en"):
    assert tokenizer is None
    return lambda s: s.split()
''',
    'shims/torchtext/data/functional.py': r'''def numericalize_tokens_from_iterator(vocab, iterator, removed_tokens=None):
    stoi = vocab.get_stoi()
    for tokens in iterator:
        yield iter(stoi[t] for t in tokens if removed_tokens is None or t not in removed_tokens)
''',
    'shims/torchtext/vocab.py': r'''from collections import Counter


class Vocab:
    def __init__(self, itos):
        self._itos = list(itos)
        self._stoi = {s: i for i, s in enumerate(self._itos)}

    def get_itos(self):
        return self._itos

    def get_stoi(self):
        return self._stoi

    def __len__(self):
        return len(self._itos)


def build_vocab_from_iterator(iterator, min_freq=1, specials=None, special_first=True):
    c = Counter()
    for toks in iterator:
        c.update(toks)
    specials = list(specials or [])
    words = [w for w, n in sorted(c.items(), key=lambda kv: -kv[1]) if n >= min_freq and w not in specials]
    return Vocab(specials + words if special_first else words + specials)
''',
    'shims/dask/dataframe.py': r'''# data_utils.py imports dask only for train_test_split_by_time, which process_movielens100k.py
# replaces with the same per-user leave-last-two-out split in plain pandas.
''',
    'process_movielens100k.py': r'''"""process_movielens1m.py adapted to MovieLens-100K (u.data / u.item): same graph schema
(user -watched-> movie, movie -watched-by-> user), same movie features (year category, genre
vector, title text), same split (per user: last interaction test, second last val). Changes:
the 100K file formats; users carry no features (the model only projects movie features);
the split is done in pandas (data_utils' version needs dask) with identical semantics."""
import argparse, os, pickle, re, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "shims"))
import numpy as np
import pandas as pd
import torch

import dgl
from builder import PandasGraphBuilder
from data_utils import build_train_graph, build_val_test_matrix

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]


def split_by_time(df, timestamp, user):
    df = df.copy()
    df["train_mask"] = True
    df["val_mask"] = False
    df["test_mask"] = False
    order = df.sort_values([user, timestamp], kind="stable")
    pos_from_end = order.groupby(user).cumcount(ascending=False).reindex(df.index)
    n = df.groupby(user)[user].transform("size")
    test = (pos_from_end == 0) & (n > 1)
    val = (pos_from_end == 1) & (n > 2)
    df.loc[test | val, "train_mask"] = False
    df.loc[test, "test_mask"] = True
    df.loc[val, "val_mask"] = True
    return (df["train_mask"].to_numpy().nonzero()[0], df["val_mask"].to_numpy().nonzero()[0],
            df["test_mask"].to_numpy().nonzero()[0])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("directory")
    p.add_argument("out_directory")
    a = p.parse_args()
    os.makedirs(a.out_directory, exist_ok=True)
    ratings = pd.read_csv(os.path.join(a.directory, "u.data"), sep="\t",
                          names=["user_id", "movie_id", "rating", "timestamp"]).astype("int64")
    movies = []
    with open(os.path.join(a.directory, "u.item"), encoding="latin1") as f:
        for l in f:
            parts = l.rstrip("\n").split("|")
            if len(parts) < 24:
                continue
            id_, title = int(parts[0]), parts[1].strip()
            m = re.match(r"(.*)\(([0-9]{4})\)$", title)
            year, title = (m.group(2), m.group(1).strip()) if m else ("unknown", title)
            d = {"movie_id": id_, "title": title, "year": year}
            for g, flag in zip(GENRES, parts[5:24]):
                if flag == "1":
                    d[g] = True
            movies.append(d)
    movies = pd.DataFrame(movies).astype({"year": "category"})
    users = pd.DataFrame({"user_id": np.sort(ratings["user_id"].unique())})
    movies = movies[movies["movie_id"].isin(ratings["movie_id"].unique())]
    genre_columns = movies.columns.drop(["movie_id", "title", "year"])
    movies[genre_columns] = movies[genre_columns].fillna(False).astype("bool")
    movies_categorical = movies.drop("title", axis=1)

    gb = PandasGraphBuilder()
    gb.add_entities(users, "user_id", "user")
    gb.add_entities(movies_categorical, "movie_id", "movie")
    gb.add_binary_relations(ratings, "user_id", "movie_id", "watched")
    gb.add_binary_relations(ratings, "movie_id", "user_id", "watched-by")
    g = gb.build()
    g.nodes["movie"].data["year"] = torch.LongTensor(np.array(movies["year"].cat.codes.values))
    g.nodes["movie"].data["genre"] = torch.FloatTensor(np.array(movies[genre_columns].values, dtype=np.float32))
    for et in ["watched", "watched-by"]:
        for col in ["rating", "timestamp"]:
            g.edges[et].data[col] = torch.LongTensor(np.array(ratings[col].values))
    tr, va, te = split_by_time(ratings, "timestamp", "user_id")
    train_g = build_train_graph(g, tr, "user", "movie", "watched", "watched-by")
    assert train_g.out_degrees(etype="watched").min() > 0
    val_matrix, test_matrix = build_val_test_matrix(g, va, te, "user", "movie", "watched")
    dgl.save_graphs(os.path.join(a.out_directory, "train_g.bin"), train_g)
    dataset = {"val-matrix": val_matrix, "test-matrix": test_matrix,
               "item-texts": {"title": movies["title"].values}, "item-images": None,
               "user-type": "user", "item-type": "movie", "user-to-item-type": "watched",
               "item-to-user-type": "watched-by", "timestamp-edge-column": "timestamp"}
    with open(os.path.join(a.out_directory, "data.pkl"), "wb") as f:
        pickle.dump(dataset, f)
    print(train_g)
''',
    'bench_dgl.py': r'''"""Time DGL's PinSAGE example (model.py, unchanged) without editing its training loop:
torch.utils.data.DataLoader is wrapped so next() on its iterator is timed (data wait) and the
positive pairs of each batch counted; tqdm.trange is wrapped to timestamp each step and to stop
after the training loop (before the per-epoch evaluation). Usage:
  python bench_dgl.py <warmup_steps> <result.json> <model.py args...>"""
import json, os, runpy, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "shims"))
sys.path.insert(0, HERE)
os.environ.setdefault("DGL_SKIP_GRAPHBOLT", "1")
import torch, torch.utils.data as tud, tqdm


warmup, out = int(sys.argv[1]), sys.argv[2]
sys.argv = [os.path.join(HERE, "model.py")] + sys.argv[3:]
rec = {"step_t": [], "wait": [], "pairs": [], "t_end": None}


class _Iter:
    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        b = next(self.it)
        rec["wait"].append(time.perf_counter() - t0)
        if isinstance(b, tuple) and len(b) == 3 and not isinstance(b[0], list):
            rec["pairs"].append(int(b[0].num_edges()))
        return b


class TimedLoader(tud.DataLoader):
    def __iter__(self):
        return _Iter(super().__iter__())


class Done(Exception):
    pass


def trange(n, *a, **k):
    for i in range(n):
        rec["step_t"].append(time.perf_counter())
        yield i
    rec["t_end"] = time.perf_counter()
    raise Done


_Adam = torch.optim.Adam


def Adam(params, *a, **k):  # records the model's parameter count (the loop builds Adam once)
    params = list(params)
    rec["params"] = sum(p.numel() for p in params)
    return _Adam(params, *a, **k)


torch.optim.Adam = Adam
tud.DataLoader = TimedLoader
tqdm.trange = trange
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except Done:
    pass
ts = rec["step_t"] + [rec["t_end"]]
w = warmup
steps = len(rec["step_t"]) - w
elapsed = ts[-1] - ts[w]
wait = sum(rec["wait"][w:w + steps])
pairs = sum(rec["pairs"][w:w + steps])
params = None
res = {"steps": steps, "elapsed_s": elapsed, "pairs": pairs, "pairs_per_s": pairs / elapsed,
       "steps_per_s": steps / elapsed, "data_wait_s": wait, "data_wait_share": wait / elapsed,
       "mean_pairs_per_batch": pairs / steps, "torch_threads": torch.get_num_threads(), "params": rec.get("params")}
json.dump(res, open(out, "w"))
print(json.dumps(res))
''',
    'shims/torchtext/data/__init__.py': '',
    'shims/dask/__init__.py': '',
}


BUILDER_IMPORT = """from pandas.api.types import (
    is_categorical,
    is_categorical_dtype,
    is_numeric_dtype,
)"""
BUILDER_IMPORT_PANDAS3 = """from pandas.api.types import is_numeric_dtype  # pandas 3 removed is_categorical* (unused helper below)
is_categorical = lambda s: isinstance(s.dtype, __import__("pandas").CategoricalDtype)"""


def setup_dgl(dgl_dir: str, dgl_python: str, raw: str) -> None:
    """Write the harness next to DGL's example in ``dgl_dir`` (which must already hold the example's
    files), patch its ``builder.py`` import for pandas 3, and build its MovieLens-100K graph."""
    d = Path(dgl_dir)
    missing = [f for f in ("model.py", "layers.py", "sampler.py", "builder.py", "data_utils.py", "evaluation.py")
               if not (d / f).exists()]
    if missing:
        raise SystemExit(f"{d} lacks DGL's example files {missing}: copy examples/pytorch/pinsage/ of dmlc/dgl there")
    for rel, text in DGL_HARNESS.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    b = (d / "builder.py").read_text()
    if BUILDER_IMPORT in b:
        (d / "builder.py").write_text(b.replace(BUILDER_IMPORT, BUILDER_IMPORT_PANDAS3))
    env = dict(os.environ, DGL_SKIP_GRAPHBOLT="1")
    env.pop("PYTHONPATH", None)
    subprocess.run([dgl_python, str(d / "process_movielens100k.py"), raw, str(d / "ml100k")], env=env, check=True)


# ----------------------------------------------------------------------------------------------
# parent: alternate ours / DGL subprocesses
# ----------------------------------------------------------------------------------------------


def _run_json(cmd, env, timeout, out_path) -> dict:
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 or not os.path.exists(out_path):
        raise RuntimeError(f"{cmd[:3]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = json.load(open(out_path))
    r["process_wall_s"] = time.time() - t0
    return r


def run_ours(a, bs, nw, hard_epoch, tmp, profile="") -> dict:
    out = os.path.join(tmp, f"ours-{bs}-{nw}-{hard_epoch}.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ours-worker", out, "--batch-sizes", str(bs),
           "--workers", str(nw), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--hard-epoch", str(hard_epoch)] + (["--profile-out", profile] if profile else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE", WANDB_MODE="disabled")
    return _run_json(cmd, env, 600, out)


def run_dgl(a, bs, nw, tmp, data, model) -> dict:
    out = os.path.join(tmp, f"dgl-{bs}-{nw}.json")
    cmd = [a.dgl_python, os.path.join(a.dgl_dir, "bench_dgl.py"), str(a.warmup), out,
           os.path.join(a.dgl_dir, "ml100k"), "--hidden-dims", str(model["hidden_channels"]),
           "--num-layers", str(data["num_layers"]), "--num-neighbors", str(data["num_neighbors"]),
           "--num-random-walks", str(data["num_walks"]), "--random-walk-length", str(data["walk_length"]),
           "--random-walk-restart-prob", str(data["restart_prob"]), "--batch-size", str(bs),
           "--num-workers", str(nw), "--batches-per-epoch", str(a.warmup + a.steps), "--num-epochs", "1"]
    env = dict(os.environ, DGL_SKIP_GRAPHBOLT="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("PYTHONPATH", None)
    r = _run_json(cmd, env, 600, out)
    r["command"] = " ".join(cmd[1:])
    return r


def _note(o: dict, nw: int) -> str:
    h = o["hard_negatives_per_pair"]
    return (f"ours: {o['easy_negatives_per_pair']} shared easy + {h} hard negatives per pair "
            f"({'curriculum epoch 0' if h == 0 else 'curriculum at its cap'}); DGL: 1 uniform negative per pair; "
            f"{nw} DataLoader workers on both sides; pairs/s = positive pairs / wall time of the measured steps; "
            f"best of the interleaved repeats per side")


def _machine() -> dict:
    import torch

    cpu = cpu_model()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dgl-python", default="/tmp/dglvenv/bin/python")
    p.add_argument("--dgl-dir", default="/tmp/dgl-pinsage")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[512, 1024],
                   help="(with --step: none given = only the Gowalla step of --gowalla)")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; rows report the best of each side")
    p.add_argument("--hard-epoch", type=int, default=None,
                   help="(worker) curriculum epoch; parent: also measure ours at this epoch (bs[0], each workers)")
    p.add_argument("--profile", action="store_true", help="profile one of our training steps")
    p.add_argument("--profile-out", default="")
    p.add_argument("--ours-worker", default="")
    p.add_argument("--setup-dgl", action="store_true",
                   help="write the harness into --dgl-dir (holding DGL's example) and build its ML-100K graph")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.json"))
    p.add_argument("--step", action="store_true",
                   help="only the model step (step_ms, step_gflop, floor_ms) at each batch size, into "
                        "--out's step_rows (its other rows kept)")
    p.add_argument("--threads", type=int, nargs="+", default=[0],
                   help="with --step: torch threads of the step, one set of rows each (0: as configured)")
    p.add_argument("--gowalla", action="store_true",
                   help="with --step: also Gowalla's whole-catalogue step (configs/gowalla.yaml)")
    p.add_argument("--previous-as", default="",
                   help="with --step: keep --out's step_rows from before under this key")
    p.add_argument("--precision", nargs="+", default=["32-true"], choices=["32-true", "bf16-mixed"],
                   help="with --step --gowalla: bf16-mixed adds the Gowalla step under CPU bf16 autocast "
                        "(interleaved with the float32 paths), one more row")
    a = p.parse_args(argv)

    if a.step:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        os.environ.setdefault("WANDB_MODE", "disabled")  # before app.cli's "offline" default
        from app.cli import keep_freed_memory
        from training_step import gowalla_step_worker, step_worker, write_step_rows
        kept = keep_freed_memory()  # as `pinsage fit` runs the step
        rows = []
        for threads in a.threads:
            for bs in a.batch_sizes:
                rows.append(step_worker(bs, 6 if a.hard_epoch is None else a.hard_epoch, threads))
                print(json.dumps(rows[-1]), flush=True)
            if a.gowalla:
                for r in gowalla_step_worker(threads, precisions=a.precision):
                    rows.append(r)
                    print(json.dumps(r), flush=True)
        for r in rows:
            r["freed_memory_kept"] = kept
        write_step_rows(a.out, rows, "python benchmarks/training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                        a.previous_as)
        return 0

    if a.ours_worker:
        r = ours_worker(a.batch_sizes[0], a.workers[0], a.steps, a.warmup, a.hard_epoch or 0, a.profile_out)
        json.dump(r, open(a.ours_worker, "w"))
        return 0

    data, model = _settings()
    if a.setup_dgl:
        setup_dgl(a.dgl_dir, a.dgl_python, os.path.join(data["root"], DATASET, "raw"))
        return 0
    have_dgl = os.path.exists(a.dgl_python) and os.path.exists(os.path.join(a.dgl_dir, "bench_dgl.py"))
    machine = _machine()
    machine["load_average_at_start"] = list(os.getloadavg())
    rows, t_start = [], time.time()
    runs = {}  # (side, bs, nw, hard_epoch) -> list of results, in run order

    def _log(side, bs, nw, r):
        print(f"{side} bs={bs} workers={nw} hard={r.get('hard_negatives_per_pair', 0)}: "
              f"{r['pairs_per_s']:.0f} pairs/s, wait {r['data_wait_share']:.2f}, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        # repeats outermost: each (config, side) is sampled at different times of the shared load
        for rep in range(a.repeats):
            for bs in a.batch_sizes:
                for nw in a.workers:
                    r = run_ours(a, bs, nw, 0, tmp)
                    r["load_1min"] = os.getloadavg()[0]
                    runs.setdefault(("ours", bs, nw, 0), []).append(r)
                    _log("ours", bs, nw, r)
                    if have_dgl:
                        r = run_dgl(a, bs, nw, tmp, data, model)
                        r["load_1min"] = os.getloadavg()[0]
                        runs.setdefault(("dgl", bs, nw, 0), []).append(r)
                        _log("dgl ", bs, nw, r)
                    if a.hard_epoch and bs == a.batch_sizes[0]:
                        r = run_ours(a, bs, nw, a.hard_epoch, tmp)
                        r["load_1min"] = os.getloadavg()[0]
                        runs.setdefault(("ours", bs, nw, a.hard_epoch), []).append(r)
                        _log("ours", bs, nw, r)

        def best(key):
            rs = runs.get(key)
            return max(rs, key=lambda r: r["pairs_per_s"]) if rs else None

        for bs in a.batch_sizes:
            for nw in a.workers:
                dgl_all = runs.get(("dgl", bs, nw, 0), [])
                dgl = best(("dgl", bs, nw, 0))
                for he in ([0] + ([a.hard_epoch] if a.hard_epoch and bs == a.batch_sizes[0] else [])):
                    ours_all = runs[("ours", bs, nw, he)]
                    o = best(("ours", bs, nw, he))
                    row = {"dataset": DATASET, "batch_size": bs, "num_workers": nw,
                           "ours_pairs_per_s": round(o["pairs_per_s"], 1),
                           "dgl_pairs_per_s": round(dgl["pairs_per_s"], 1) if dgl else None,
                           "speedup": round(o["pairs_per_s"] / dgl["pairs_per_s"], 2) if dgl else None,
                           "data_wait_share": round(o["data_wait_share"], 3),
                           "dgl_data_wait_share": round(dgl["data_wait_share"], 3) if dgl else None,
                           "ours_steps_per_s": round(o["steps_per_s"], 3),
                           "dgl_steps_per_s": round(dgl["steps_per_s"], 3) if dgl else None,
                           "ours_pairs_per_s_repeats": [round(r["pairs_per_s"], 1) for r in ours_all],
                           "dgl_pairs_per_s_repeats": [round(r["pairs_per_s"], 1) for r in dgl_all],
                           "data_wait_share_repeats": [round(r["data_wait_share"], 3) for r in ours_all],
                           "ours_negatives_per_pair": {"easy_shared": o["easy_negatives_per_pair"],
                                                       "hard": o["hard_negatives_per_pair"]},
                           "dgl_negatives_per_pair": {"uniform": 1} if dgl else None,
                           "ours_params": o["params"],
                           "dgl_params": dgl.get("params") if dgl else None,
                           "dgl_mean_pairs_per_batch": round(dgl["mean_pairs_per_batch"], 1) if dgl else None,
                           "load_average_1min": [round(r["load_1min"], 2) for r in ours_all + dgl_all],
                           "notes": _note(o, nw)}
                    rows.append(row)
        profile = None
        if a.profile:
            prof_txt = os.path.join(tempfile.gettempdir(), "pinsage_training_profile.txt")
            pr = run_ours(a, a.batch_sizes[0], 0, a.hard_epoch or 0, tmp, profile=prof_txt)
            profile = {"batch_size": a.batch_sizes[0], "num_workers": 0,
                       "hard_negatives_per_pair": pr["hard_negatives_per_pair"],
                       "op_table": prof_txt, **pr.get("profile", {})}
            print(f"profile table: {prof_txt}", flush=True)
    machine["load_average_at_end"] = list(os.getloadavg())
    machine["wall_s"] = round(time.time() - t_start, 1)
    cmd = "python benchmarks/training.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res = {"benchmark": "training throughput, positive pairs/s (ours vs DGL PinSAGE example)",
           "command": cmd, "machine": machine,
           "settings": {"steps": a.steps, "warmup": a.warmup, "repeats": a.repeats, "data": data, "model": model},
           "rows": rows}
    if profile:
        res["profile"] = profile
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
