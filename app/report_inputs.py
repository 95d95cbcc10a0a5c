"""What ``pinsage report`` draws from (:class:`ReportInputs`), read from a run folder (training
history from the offline wandb run, Lightning's ``metrics.csv`` or ``epochs.jsonl``; embeddings from
a matching artifact folder or computed from ``checkpoints/last.ckpt``), a ``pinsage predict``
artifact folder (through :mod:`app.artifact_format`) or a sweep folder; and, at the end of a fit,
from the trained model in memory (:func:`fit_report_inputs`).
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from datamodules.progress import progress_enabled

from . import artifact_format as fmt

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
    from .evaluation import evaluate_module
    from .inference import layerwise_embeddings

    ckpts = sorted((run / "checkpoints").glob("last*.ckpt")) or sorted((run / "checkpoints").glob("*.ckpt"))
    if not ckpts:
        inp.notes.append(f"no checkpoint under {run / 'checkpoints'}: no embeddings")
        return
    ckpt = ckpts[-1]
    _log(f"loading the dataset of {run}")
    dm = _datamodule_from_config(cfg)
    model_cfg = {k: v for k, v in (cfg.get("model") or {}).items()
                 if k not in ("in_channels", "num_items", "num_users")}
    module = PinSageModule(in_channels=dm.num_features, num_items=dm.num_items, num_users=dm.num_users, **model_cfg)
    load_weights(module, str(ckpt))
    module.eval()
    add_dataset_side(inp, dm)
    _log(f"embedding {dm.num_items} items with {ckpt}")
    emb = layerwise_embeddings(module.model, dm.dataset.item_features, inp.nbr, progress=progress_enabled())
    inp.embeddings = emb.numpy().astype(np.float32)
    inp.notes.append(f"embeddings: computed from {ckpt} ({inp.embeddings.shape[0]} x {inp.embeddings.shape[1]})")
    _log("scoring the model and the baselines on the test split")
    # the module's protocols, baselines and user representation: the numbers of predict's metrics.json
    inp.metrics = evaluate_module(module, dm, torch.from_numpy(inp.embeddings), part="test", log=_log)
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


