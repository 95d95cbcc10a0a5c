"""``pinsage report PATH [PATH ...] [--out report/]``: a static HTML page with PNG figures.

Each PATH is one of (recognised by what it holds):

* a **run folder** (``trainer.default_root_dir`` of a fit: ``checkpoints/``, ``config.yaml``, an
  offline wandb run ``wandb/offline-run-*/run-*.wandb``, Lightning CSV logs ``metrics.csv`` or an
  ``epochs.jsonl``): training curves from the logger files; the embeddings come from a
  ``pinsage predict`` artifact folder made from one of its checkpoints when there is one
  (``artifacts/<dataset>``), else they are computed from ``checkpoints/last.ckpt`` (layer-wise
  inference) and scored on the test split with the same evaluation code as ``metrics.json``;
* an **artifact folder** of ``pinsage predict`` (``manifest.json``, ``embeddings.npy``,
  ``metrics.json``);
* a **sweep folder** of ``pinsage sweep`` (``trials.csv``, ``sweep.json``).

Figures (``<out>/*.png``, all referenced from ``<out>/index.html``): ``curves.png`` (loss,
violated share, lr, validation metrics per epoch), ``embedding_map.png`` (2-D UMAP of the item
embeddings, t-SNE when umap-learn is not installed, PCA as a last resort; coloured by genre or
community, a few titles labelled), ``gallery.png`` (query item -> its top importance neighbours
and its top-10 recommendations), ``metrics.png`` (model vs baselines per protocol),
``sweep_trials.png`` / ``sweep_params.png`` / ``sweep_curves.png`` (metric per trial, per
parameter, per epoch). For an artifact folder, also ``explorer.html`` (+ ``static/``): the explorer
page of ``pinsage serve`` reading a snapshot of the server's answers for the map's items and the
most active users (:func:`app.explorer_static.write_static`; ``--no-explorer`` leaves it out). Files are
written one by one under temporary names and renamed; nothing else in ``--out`` is touched.

The same figures go to wandb at the end of fit (:class:`app.callbacks.WandbFigures`, built by
:func:`fit_report_inputs` + :func:`make_figures`).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from datamodules.progress import progress_enabled

from . import artifact_format as fmt
from .projection import MAP_METHODS, ProjectionError, project_2d  # noqa: F401 (project_2d: the report's map)

FIGURE_CAPTIONS = {
    "curves": "Training curves",
    "embedding_map": "Embedding map",
    "gallery": "Neighbourhood gallery",
    "metrics": "Model vs baselines",
    "sweep_trials": "Sweep: metric per trial",
    "sweep_params": "Sweep: metric per parameter",
    "sweep_curves": "Sweep: validation metric per epoch of each trial",
}
MAX_LABELS = 10


class ReportError(ValueError):
    """Bad input to ``pinsage report``: one line for the user."""


@dataclass
class ReportInputs:
    name: str = "pinsage"
    history: Any = None  # pandas DataFrame: one row per logged record (step, epoch, metrics)
    history_source: str = ""
    embeddings: Optional[np.ndarray] = None
    titles: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None  # int [I], -1 = unknown
    label_names: List[str] = field(default_factory=list)
    label_kind: str = ""
    degree: Optional[np.ndarray] = None  # popularity (training degree) of each item
    nbr: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None  # importance neighbourhoods (CSR)
    metrics: Optional[Dict[str, float]] = None
    metrics_source: str = ""
    artifacts: Optional[Path] = None  # a predict artifact folder: the report also writes the explorer page
    trials: Any = None  # pandas DataFrame of trials.csv
    sweep: Optional[dict] = None
    sweep_curves: Dict[int, List[float]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def _log(msg: str) -> None:
    if progress_enabled():
        print(f"[pinsage report] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# readers: training history
# ----------------------------------------------------------------------------------------------
def wandb_records(path: Path):
    """The protobuf records of an offline ``run-*.wandb`` file (a 7-byte header, then 32 KiB
    blocks of ``crc u32 | length u16 | type u8`` chunks: full=1, first=2, middle=3, last=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ReportError(f"{path} is not a wandb run log (no :W&B header)")
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            try:
                rec.ParseFromString(buf)
            except Exception:  # a half-written last record of a live run
                return
            yield rec


def read_wandb_history(path: Path):
    """History rows (scalars only) of an offline wandb run log, as a DataFrame."""
    import pandas as pd

    rows = []
    for rec in wandb_records(path):
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}
        for it in rec.history.item:
            key = it.key or "/".join(it.nested_key)
            try:
                v = json.loads(it.value_json)
            except ValueError:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[key] = float(v)
        if row:
            rows.append(row)
    df = pd.DataFrame(rows)
    if "trainer/global_step" in df:
        df["step"] = df["trainer/global_step"]
    return df


def read_history(run: Path):
    """``(DataFrame, source)`` from the newest logger files under a run folder, or ``(None, "")``."""
    import pandas as pd

    wb = sorted(run.glob("**/offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    csvs = sorted(run.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime)
    jsonl = sorted(run.glob("**/epochs.jsonl"), key=lambda p: p.stat().st_mtime)
    fallback = None
    for kind, files in (("wandb", wb), ("csv", csvs), ("jsonl", jsonl)):
        for f in reversed(files):  # the newest run with training curves (a later `test` run has none)
            if kind == "wandb":
                df = read_wandb_history(f)
            elif kind == "csv":
                df = pd.read_csv(f)
            else:
                df = pd.DataFrame([json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()])
            if len(df) and any(str(c).startswith(("train/", "val/")) for c in df.columns):
                return df, str(f)
            if len(df) and fallback is None:
                fallback = (df, str(f))
    return fallback or (None, "")


# ----------------------------------------------------------------------------------------------
# readers: dataset side (labels, neighbourhoods) and embeddings
# ----------------------------------------------------------------------------------------------
def item_labels(ds) -> Tuple[Optional[np.ndarray], List[str], str]:
    """One label per item: the planted community (synthetic) or the item's most specific
    (least frequent) category/genre; the ``MAX_LABELS - 1`` most frequent labels are kept, the
    rest is ``other``. Returns ``(labels int [I] with -1 = none, names, kind)``."""
    comm = ds.extras.get("item_community") if getattr(ds, "extras", None) else None
    if comm is not None:
        comm = np.asarray(comm, dtype=np.int64)
        names = [f"community {c}" for c in range(int(comm.max()) + 1)]
        return _top_labels(comm, names, "community")
    t = ds.interactions.item_table
    if t is None or t.categories is None or t.categories.shape[1] == 0:
        return None, [], ""
    cats = np.asarray(t.categories, dtype=bool)
    freq = cats.sum(0)
    masked = np.where(cats, freq[None, :], np.iinfo(np.int64).max)
    lab = np.where(cats.any(1), masked.argmin(1), -1).astype(np.int64)
    return _top_labels(lab, list(t.category_names), "genre (most specific)")


def _top_labels(lab: np.ndarray, names: List[str], kind: str):
    valid = lab[lab >= 0]
    if valid.size == 0:
        return None, [], ""
    counts = np.bincount(valid, minlength=len(names))
    keep = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    if len(keep) <= MAX_LABELS:
        order = keep
        other = []
    else:
        order, other = keep[:MAX_LABELS - 1], keep[MAX_LABELS - 1:]
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    out_names = [str(names[c]) for c in order]
    if other:
        remap[other] = len(order)
        out_names.append("other")
    out = np.where(lab >= 0, remap[np.maximum(lab, 0)], -1)
    return out, out_names, kind


def _datamodule_from_config(cfg: dict):
    from datamodules.datamodule import PinSageDataModule

    # jsonargparse records where a section came from (`__path__`): not a DataModule argument
    data = {k: v for k, v in dict(cfg.get("data") or {}).items() if not str(k).startswith("__")}
    data.update(num_workers=0, persistent_workers=False)
    dm = PinSageDataModule(**data)
    dm.setup("predict")
    return dm


def add_dataset_side(inp: ReportInputs, dm) -> None:
    """Titles, labels, degrees and the importance neighbourhoods from a set-up DataModule."""
    from .inference import neighbourhoods_for_all

    ds = dm.dataset
    titles = ds.item_titles()
    if titles is not None and inp.titles is None:
        inp.titles = np.asarray(titles, dtype=object)
    inp.labels, inp.label_names, inp.label_kind = item_labels(ds)
    inp.degree = np.asarray(ds.train_graph.item_degree(), dtype=np.float64)
    try:
        inp.nbr = neighbourhoods_for_all(dm.neighbour_sampler(), ds.num_items, progress=progress_enabled())
    except Exception as e:  # the gallery then shows recommendations only
        inp.notes.append(f"neighbourhoods not sampled: {e}")


def _load_config(path: Path) -> dict:
    import yaml

    cfg = yaml.safe_load(path.read_text()) or {}
    return cfg.get("fit", cfg) if isinstance(cfg, dict) else {}


def load_artifacts(folder: Path, inp: ReportInputs, with_dataset: bool = True) -> None:
    man = fmt.read_manifest(folder)
    inp.embeddings = np.load(folder / fmt.EMBEDDINGS)
    inp.artifacts = folder
    items = fmt.read_items(folder)
    inp.titles = np.array([t or f"item {i}" for i, t in zip(items.ids, items.titles)], dtype=object)
    if (folder / fmt.METRICS).is_file():
        inp.metrics = json.loads((folder / fmt.METRICS).read_text())
        inp.metrics_source = f"{folder / fmt.METRICS} (test split)"
    inp.name = inp.name if inp.name != "pinsage" else str(man.get("dataset", folder.name))
    inp.notes.append(f"embeddings: {folder / fmt.EMBEDDINGS} ({inp.embeddings.shape[0]} x {inp.embeddings.shape[1]}, "
                     f"checkpoint {man.get('checkpoint')})")
    if with_dataset and man.get("config"):
        try:
            add_dataset_side(inp, _datamodule_from_config(man["config"]))
        except Exception as e:
            inp.notes.append(f"dataset not loaded (no labels / neighbourhoods): {type(e).__name__}: {e}")


def _matching_artifacts(run: Path, cfg: dict) -> Optional[Path]:
    """A ``pinsage predict`` folder made from one of this run's checkpoints, if there is one."""
    cands = []
    out = (cfg.get("artifacts") or {}).get("output_dir")
    if out:
        cands.append(Path(out))
    ds = (cfg.get("data") or {}).get("dataset")
    if ds:
        cands.append(Path("artifacts") / ds)
    cands += [p.parent for p in run.parent.glob(f"*/{fmt.MANIFEST}")]
    root = run.resolve()
    for c in cands:
        if not fmt.looks_like_artifacts(c):
            continue
        ck = json.loads((c / fmt.MANIFEST).read_text()).get("checkpoint") or ""
        if ck and Path(ck).resolve().is_relative_to(root):
            return c
    return None


def embed_run(run: Path, cfg: dict, inp: ReportInputs) -> None:
    """Embeddings of a run's last checkpoint (layer-wise inference) + test metrics."""
    import torch

    from models.module import PinSageModule

    from .artifacts import load_weights
    from .evaluation import evaluate
    from .inference import layerwise_embeddings

    ckpts = sorted((run / "checkpoints").glob("last*.ckpt")) or sorted((run / "checkpoints").glob("*.ckpt"))
    if not ckpts:
        inp.notes.append(f"no checkpoint under {run / 'checkpoints'}: no embeddings")
        return
    ckpt = ckpts[-1]
    _log(f"loading the dataset of {run}")
    dm = _datamodule_from_config(cfg)
    model_cfg = {k: v for k, v in (cfg.get("model") or {}).items() if k not in ("in_channels", "num_items")}
    module = PinSageModule(in_channels=dm.num_features, num_items=dm.num_items, **model_cfg)
    load_weights(module, str(ckpt))
    module.eval()
    add_dataset_side(inp, dm)
    _log(f"embedding {dm.num_items} items with {ckpt}")
    emb = layerwise_embeddings(module.model, dm.dataset.item_features, inp.nbr, progress=progress_enabled())
    inp.embeddings = emb.numpy().astype(np.float32)
    inp.notes.append(f"embeddings: computed from {ckpt} ({inp.embeddings.shape[0]} x {inp.embeddings.shape[1]})")
    _log("scoring the model and the baselines on the test split")
    inp.metrics = evaluate(dm.dataset, torch.from_numpy(inp.embeddings), part="test",
                           log=_log)
    inp.metrics_source = f"computed from {ckpt} (test split)"


def load_run(run: Path, inp: ReportInputs, embed: bool = True) -> None:
    inp.history, inp.history_source = read_history(run)
    cfg_path = next(iter(sorted(run.glob("config.yaml"))), None) or next(iter(sorted(run.glob("**/config.yaml"))), None)
    cfg = _load_config(cfg_path) if cfg_path else {}
    if inp.name == "pinsage":
        inp.name = run.name
    if inp.embeddings is not None or not embed:
        return
    art = _matching_artifacts(run, cfg) if cfg else None
    if art is not None:
        inp.notes.append(f"artifacts of this run: {art}")
        load_artifacts(art, inp)
    elif cfg:
        embed_run(run, cfg, inp)
    else:
        inp.notes.append(f"no config.yaml under {run}: no embeddings")


def load_sweep(folder: Path, inp: ReportInputs) -> None:
    import pandas as pd

    inp.trials = pd.read_csv(folder / "trials.csv")
    sj = folder / "sweep.json"
    inp.sweep = json.loads(sj.read_text()) if sj.is_file() else {}
    inp.name = inp.name if inp.name != "pinsage" else str(inp.sweep.get("name", folder.name))
    for _, row in inp.trials.iterrows():
        f = Path(str(row.get("trial_dir", ""))) / "epochs.jsonl"
        metric = inp.sweep.get("metric")
        if metric and f.is_file():
            vals = [json.loads(ln).get(metric) for ln in f.read_text().splitlines() if ln.strip()]
            inp.sweep_curves[int(row["trial"])] = [v for v in vals if v is not None]


def load_inputs(paths: List[str], embed: bool = True) -> ReportInputs:
    inp = ReportInputs()
    kinds = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise ReportError(f"{raw!r} is not a folder (give a run folder, a predict artifact folder or a sweep folder)")
        if (p / "trials.csv").is_file():
            load_sweep(p, inp)
            kinds.append("sweep")
        elif fmt.looks_like_artifacts(p):
            load_artifacts(p, inp)
            kinds.append("artifacts")
        elif any((p / n).exists() for n in ("checkpoints", "config.yaml", "wandb")) or list(p.glob("**/metrics.csv")) \
                or list(p.glob("**/epochs.jsonl")):
            kinds.append("run")
        else:
            raise ReportError(f"{raw!r} holds no run (checkpoints/, config.yaml, wandb/, metrics.csv), "
                              "no predict artifacts (manifest.json + embeddings.npy) and no sweep (trials.csv)")
    for raw, kind in zip(paths, kinds):
        if kind == "run":  # after any artifact folder, so given embeddings are not recomputed
            load_run(Path(raw), inp, embed=embed)
    return inp


def fit_report_inputs(model, dm, history, evaluate: bool = True) -> ReportInputs:
    """Inputs of the end-of-fit figures: the in-memory history, embeddings of the trained model
    (layer-wise), validation metrics of the model and the baselines (``item`` protocol)."""
    import torch

    from .evaluation import evaluate as run_evaluation
    from .inference import layerwise_embeddings

    inp = ReportInputs(name=getattr(dm, "dataset_name", "pinsage"), history=history, history_source="this fit")
    add_dataset_side(inp, dm)
    was = model.training
    emb = layerwise_embeddings(model, dm.dataset.item_features, inp.nbr, progress=progress_enabled())
    model.train(was)
    inp.embeddings = emb.cpu().numpy().astype(np.float32)
    if evaluate:
        inp.metrics = run_evaluation(dm.dataset, torch.from_numpy(inp.embeddings), part="val", protocols=("item",))
        inp.metrics_source = "validation split, item protocol"
    return inp


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history):
    """Loss, violated share, lr (per step) and validation metrics (per epoch)."""
    plt = _plt()
    if history is None or len(history) == 0:
        return None
    step = "step" if "step" in history else ("_step" if "_step" in history else None)
    train_keys = [k for k in ("train/loss", "train/violated", "lr") if k in history]
    val_keys = [k for k in history.columns if k.startswith("val/pinsage/") and not k.endswith("seconds")]
    panels = train_keys + (["val"] if val_keys else [])
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "val":
            for k in val_keys:
                d = history[[c for c in ("epoch", step, k) if c and c in history]].dropna(subset=[k])
                x = d["epoch"] if "epoch" in d else d[step]
                ax.plot(x.to_numpy(), d[k].to_numpy(), marker="o", label=k.split("/", 2)[2])
            ax.set_xlabel("epoch" if "epoch" in history else "step")
            ax.set_title("validation")
            ax.legend(fontsize=7)
        else:
            d = history[[c for c in (step, key) if c]].dropna(subset=[key]) if step else history[[key]].dropna()
            x = d[step].to_numpy() if step else np.arange(len(d))
            ax.plot(x, d[key].to_numpy(), lw=1)
            ax.set_xlabel("step")
            ax.set_title(key)
            if key == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _short(t: Any, n: int = 36) -> str:
    s = str(t)
    return s if len(s) <= n else s[:n - 1] + "…"


# tab10 without its grey (grey is "other")
_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "navy", "gold", "lime", "magenta", "teal", "salmon", "black", "khaki", "indigo", "sienna"]


def plot_embedding_map(inp: ReportInputs, max_items: int = 3000, num_titles: int = 12, seed: int = 0,
                       method: str = "auto"):
    plt = _plt()
    emb = inp.embeddings
    if emb is None or emb.shape[0] == 0:
        return None, ""
    n = emb.shape[0]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, max_items, replace=False)) if n > max_items else np.arange(n)
    _log(f"projecting {len(idx)} embeddings to 2-D")
    xy, method = project_2d(emb[idx], seed, method)
    fig, ax = plt.subplots(figsize=(10, 8))
    if inp.labels is not None:
        lab = inp.labels[idx]
        none = lab < 0
        if none.any():
            ax.scatter(xy[none, 0], xy[none, 1], s=6, c="lightgrey", label="(none)", alpha=0.6)
        for c, name in enumerate(inp.label_names):
            m = lab == c
            if m.any():
                color = "darkgrey" if name == "other" else _COLORS[c % len(_COLORS)]
                ax.scatter(xy[m, 0], xy[m, 1], s=8, color=color, label=f"{name} ({int(m.sum())})", alpha=0.75)
        ax.legend(title=inp.label_kind, fontsize=8, markerscale=2, loc="best", framealpha=0.8)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    if inp.titles is not None:
        pop = inp.degree[idx] if inp.degree is not None else np.zeros(len(idx))
        for j in np.argsort(-pop, kind="stable")[:num_titles]:
            ax.annotate(_short(inp.titles[idx[j]], 30), xy[j], fontsize=7, xytext=(3, 3), textcoords="offset points",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.7, lw=0))
    ax.set_xticks([])
    ax.set_yticks([])
    sub = f", a random {len(idx)} of {n}" if len(idx) < n else ""
    ax.set_title(f"{inp.name}: {method} of {len(idx)} item embeddings{sub}; most popular titles labelled")
    fig.tight_layout()
    return fig, method


def gallery_queries(inp: ReportInputs, num_queries: int = 4) -> List[int]:
    """Diverse popular queries: the most popular item of each of the largest labels."""
    n = inp.embeddings.shape[0]
    pop = inp.degree if inp.degree is not None else np.zeros(n)
    order = np.argsort(-pop, kind="stable")
    picks: List[int] = []
    seen = set()
    for i in order:
        lab = int(inp.labels[i]) if inp.labels is not None else -1
        if inp.labels is not None and (lab in seen or lab < 0 or inp.label_names[lab] == "other"):
            continue
        seen.add(lab)
        picks.append(int(i))
        if len(picks) == num_queries:
            return picks
    return picks + [int(i) for i in order if int(i) not in picks][:num_queries - len(picks)]


def gallery_rows(inp: ReportInputs, num_queries: int = 4, k: int = 10) -> List[dict]:
    emb = inp.embeddings
    titles = inp.titles if inp.titles is not None else np.array([f"item {i}" for i in range(emb.shape[0])], dtype=object)
    out = []
    for q in gallery_queries(inp, num_queries):
        scores = emb @ emb[q]
        scores[q] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        nbrs = []
        if inp.nbr is not None:
            ptr, items, w = inp.nbr
            a, b = int(ptr[q]), int(ptr[q + 1])
            nbrs = [(str(titles[int(i)]), float(x)) for i, x in zip(items[a:b][:k], w[a:b][:k])]
        lab = ""
        if inp.labels is not None and inp.labels[q] >= 0:
            lab = inp.label_names[int(inp.labels[q])]
        out.append({"query": str(titles[q]), "label": lab, "neighbours": nbrs,
                    "recommendations": [(str(titles[int(i)]), float(scores[i])) for i in top]})
    return out


def plot_gallery(rows: List[dict]):
    plt = _plt()
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 1, figsize=(13, 2.9 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        ax.axis("off")
        head = f"query: {_short(r['query'], 60)}" + (f"   [{r['label']}]" if r["label"] else "")
        ax.text(0.0, 1.0, head, fontsize=10, fontweight="bold", va="top", transform=ax.transAxes)
        left = ["importance neighbours (visit weight)"] + [f"{_short(t, 44)}  {w:.3f}" for t, w in r["neighbours"]]
        if not r["neighbours"]:
            left.append("(not sampled)")
        right = ["top-10 recommendations (score)"] + [f"{_short(t, 44)}  {s:.3f}" for t, s in r["recommendations"]]
        for x, lines in ((0.0, left), (0.5, right)):
            ax.text(x, 0.86, lines[0], fontsize=8.5, style="italic", va="top", transform=ax.transAxes)
            ax.text(x, 0.76, "\n".join(lines[1:]), fontsize=7.5, va="top", family="monospace", transform=ax.transAxes,
                    linespacing=1.25)
    fig.tight_layout()
    return fig


def metric_table(metrics: Dict[str, float]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{protocol: {metric: {model: value}}}`` from the flat ``model/protocol/metric`` keys."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for k, v in metrics.items():
        parts = k.split("/")
        if len(parts) != 3 or parts[2] == "seconds" or parts[2].startswith("num_"):
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        model, proto, metric = parts
        out.setdefault(proto, {}).setdefault(metric, {})[model] = v
    return out


def plot_metrics(metrics: Optional[Dict[str, float]], source: str = ""):
    plt = _plt()
    table = metric_table(metrics or {})
    if not table:
        return None
    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 3.8), squeeze=False)
    for ax, (proto, per_metric) in zip(axes[0], sorted(table.items())):
        names = list(per_metric)
        models = sorted({m for d in per_metric.values() for m in d}, key=lambda m: (m not in ("pinsage", "model"), m))
        w = 0.8 / max(len(models), 1)
        for j, m in enumerate(models):
            vals = [per_metric[n].get(m, np.nan) for n in names]
            ax.bar(np.arange(len(names)) + (j - (len(models) - 1) / 2) * w, vals, w, label=m)
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"protocol: {proto}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    if source:
        fig.suptitle(source, fontsize=9)
    fig.tight_layout()
    return fig


def _state_colors():
    return {"complete": "tab:blue", "pruned": "tab:orange", "fail": "tab:red"}


def plot_sweep_trials(trials, sweep: dict):
    plt = _plt()
    if trials is None or len(trials) == 0:
        return None
    metric = sweep.get("metric", "value")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    colors = _state_colors()
    for state, d in trials.groupby("state"):
        ax.scatter(d["trial"], d["value"], color=colors.get(state, "grey"), label=state, s=40)
    best = (sweep.get("best") or {}).get("trial")
    if best is not None and (trials["trial"] == best).any():
        b = trials[trials["trial"] == best].iloc[0]
        ax.scatter([b["trial"]], [b["value"]], marker="*", s=260, color="gold", edgecolor="k", label="best", zorder=3)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"sweep {sweep.get('name', '')}: {metric} per trial ({sweep.get('method', '')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sweep_params(trials, sweep: dict):
    plt = _plt()
    params = list((sweep.get("parameters") or {}).keys())
    params = [p for p in params if p in trials]
    if trials is None or len(trials) == 0 or not params:
        return None
    metric = sweep.get("metric", "value")
    fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.6), squeeze=False, sharey=True)
    colors = _state_colors()
    for ax, p in zip(axes[0], params):
        col = trials[p].astype(str)
        try:
            x = col.astype(float).to_numpy()
            cats = None
        except ValueError:
            cats = sorted(set(col))
            x = np.array([cats.index(v) for v in col], dtype=float)
        for state in trials["state"].unique():
            m = (trials["state"] == state).to_numpy()
            ax.scatter(x[m], trials["value"].to_numpy()[m], color=colors.get(state, "grey"), label=state, s=36)
        if cats is not None:
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, rotation=20, fontsize=8)
        elif (sweep["parameters"][p] or {}).get("log") and x.min() > 0 and x.max() / x.min() >= 10:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")  # log only across a decade or more: else the ticks have no labels
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.set_xlabel(p)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sweep_curves(curves: Dict[int, List[float]], sweep: dict):
    plt = _plt()
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.8))
    from matplotlib.ticker import MaxNLocator

    for t, vals in sorted(curves.items()):
        ax.plot(np.arange(1, len(vals) + 1), vals, marker="o", label=f"trial {t}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.get("metric", "value"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def make_figures(inp: ReportInputs, max_items: int = 3000, num_queries: int = 4,
                 gallery: Optional[List[dict]] = None, map_method: str = "auto") -> Dict[str, Any]:
    """Every figure the inputs allow, ``{name: matplotlib Figure}`` (names as FIGURE_CAPTIONS)."""
    figs: Dict[str, Any] = {}
    f = plot_curves(inp.history)
    if f is not None:
        figs["curves"] = f
    if inp.embeddings is not None:
        f, method = plot_embedding_map(inp, max_items=max_items, method=map_method)
        if f is not None:
            figs["embedding_map"] = f
            fallback = method != "UMAP" and map_method == "auto"
            inp.notes.append(f"embedding map: {method}" + (" (umap-learn is not installed: pip install umap-learn)"
                                                          if fallback else ""))
        rows = gallery if gallery is not None else gallery_rows(inp, num_queries)
        f = plot_gallery(rows)
        if f is not None:
            figs["gallery"] = f
    f = plot_metrics(inp.metrics, inp.metrics_source)
    if f is not None:
        figs["metrics"] = f
    if inp.trials is not None:
        for name, fn in (("sweep_trials", lambda: plot_sweep_trials(inp.trials, inp.sweep or {})),
                         ("sweep_params", lambda: plot_sweep_params(inp.trials, inp.sweep or {})),
                         ("sweep_curves", lambda: plot_sweep_curves(inp.sweep_curves, inp.sweep or {}))):
            f = fn()
            if f is not None:
                figs[name] = f
    return figs


# ----------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------
def _atomic_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a page is for reading
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fig_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _html_page(inp: ReportInputs, written: List[str], gallery: List[dict], explorer: bool = False) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>pinsage report: {e(inp.name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}"
             "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}h2{margin-top:1.6em}"
             ".note{color:#555;font-size:13px}</style></head><body>",
             f"<h1>pinsage report: {e(inp.name)}</h1>"]
    if inp.notes or inp.history_source:
        parts.append("<ul class='note'>")
        if inp.history_source:
            parts.append(f"<li>training curves: {e(inp.history_source)}</li>")
        parts += [f"<li>{e(n)}</li>" for n in inp.notes]
        parts.append("</ul>")
    if explorer:
        parts.append("<p><a href='explorer.html'>Explorer</a>: search, item and user cards, the map (offline copy)</p>")
    for name in written:
        parts.append(f"<h2 id='{name}'>{e(FIGURE_CAPTIONS.get(name, name))}</h2>")
        parts.append(f"<img src='{name}.png' alt='{e(FIGURE_CAPTIONS.get(name, name))}'>")
        if name == "gallery" and gallery:
            for r in gallery:
                parts.append(f"<h3>{e(r['query'])}" + (f" <small>[{e(r['label'])}]</small>" if r["label"] else "")
                             + "</h3><table><tr><th>importance neighbour</th><th>weight</th>"
                             "<th>recommendation</th><th>score</th></tr>")
                for j in range(max(len(r["neighbours"]), len(r["recommendations"]))):
                    a = r["neighbours"][j] if j < len(r["neighbours"]) else ("", None)
                    b = r["recommendations"][j] if j < len(r["recommendations"]) else ("", None)
                    parts.append(f"<tr><td>{e(a[0])}</td><td>{'' if a[1] is None else f'{a[1]:.3f}'}</td>"
                                 f"<td>{e(b[0])}</td><td>{'' if b[1] is None else f'{b[1]:.3f}'}</td></tr>")
                parts.append("</table>")
        if name == "metrics" and inp.metrics:
            table = metric_table(inp.metrics)
            for proto, per_metric in sorted(table.items()):
                models = sorted({m for d in per_metric.values() for m in d})
                parts.append(f"<table><tr><th>{e(proto)}</th>" + "".join(f"<th>{e(m)}</th>" for m in models) + "</tr>")
                for metric, d in per_metric.items():
                    parts.append(f"<tr><td>{e(metric)}</td>" + "".join(
                        f"<td>{d[m]:.4f}</td>" if m in d else "<td></td>" for m in models) + "</tr>")
                parts.append("</table>")
        if name == "sweep_trials" and inp.trials is not None:
            parts.append(inp.trials.drop(columns=[c for c in ("error",) if c in inp.trials and
                                                  inp.trials[c].isna().all()]).to_html(index=False, na_rep=""))
    if not written:
        parts.append("<p>No figure could be made from the inputs.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(inp: ReportInputs, out: Path, max_items: int = 3000, num_queries: int = 4,
                 map_method: str = "auto", explorer: bool = True) -> List[Path]:
    """Write ``<out>/<figure>.png`` and ``<out>/index.html``, and for an artifact folder the offline
    explorer (``explorer.html`` + ``static/``, :func:`app.explorer_static.write_static`); returns the
    written paths."""
    out.mkdir(parents=True, exist_ok=True)
    gallery = gallery_rows(inp, num_queries) if inp.embeddings is not None else []
    figs = make_figures(inp, max_items=max_items, num_queries=num_queries, gallery=gallery, map_method=map_method)
    plt = _plt()
    paths = []
    for name, fig in figs.items():
        p = out / f"{name}.png"
        _atomic_bytes(p, _fig_png(fig))
        plt.close(fig)
        paths.append(p)
    if explorer and inp.artifacts is not None:
        from .explorer_static import write_static

        n = min(max_items, 2000, inp.embeddings.shape[0])
        _log(f"explorer page: the cards of {n} items")
        try:
            paths += write_static(inp.artifacts, out, _atomic_bytes, num_items=n, map_method=map_method)
        except (OSError, ValueError, KeyError) as e:  # e.g. an older predict's folder: the report still stands
            inp.notes.append(f"explorer page not written: {type(e).__name__}: {e}")
    index = out / "index.html"
    _atomic_bytes(index, _html_page(inp, list(figs), gallery, any(p.name == "explorer.html" for p in paths)).encode())
    return paths + [index]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinsage report",
                                description="Static HTML report (PNG figures) of a run, predict artifacts or a sweep.")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_ARTIFACTS",
                   help="run folder(s) (default_root_dir of a fit), predict artifact folder(s), sweep folder(s)")
    p.add_argument("--out", default="report", help="output folder (default report/)")
    p.add_argument("--max-items", type=int, default=3000, help="items on the embedding map (default 3000)")
    p.add_argument("--queries", type=int, default=4, help="query items in the gallery (default 4)")
    p.add_argument("--map", default="auto", choices=MAP_METHODS,
                   help="2-D projection of the map: auto (UMAP if umap-learn is installed, else t-SNE), umap, tsne, pca")
    p.add_argument("--no-explorer", dest="explorer", action="store_false",
                   help="without the offline explorer page (explorer.html: item/user cards of the map's items)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        os.environ["PINSAGE_QUIET"] = "1"
    try:
        if args.max_items < 5:
            raise ReportError(f"--max-items must be >= 5, got {args.max_items}")
        if args.queries < 0:
            raise ReportError(f"--queries must be >= 0, got {args.queries}")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ReportError("matplotlib is not installed: pip install -e '.[tools]'") from None
        inp = load_inputs(args.paths)
        paths = write_report(inp, Path(args.out), max_items=args.max_items, num_queries=args.queries,
                             map_method=args.map, explorer=args.explorer)
    except (ReportError, ProjectionError, FileNotFoundError) as e:
        print(f"pinsage report: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"report": str(Path(args.out) / "index.html"), "files": [str(p) for p in paths]}))
    return 0
