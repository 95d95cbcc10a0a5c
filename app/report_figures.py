"""The figures of ``pinsage report`` and of the end-of-fit wandb images: training curves, the
embedding map, the neighbourhood gallery, model vs baselines, and the sweep's trials, parameters
and curves (:func:`make_figures`; matplotlib, imported on first use).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from .projection import project_2d
from .report_inputs import ReportInputs, _log

FIGURE_CAPTIONS = {
    "curves": "Training curves",
    "embedding_map": "Embedding map",
    "gallery": "Neighbourhood gallery",
    "metrics": "Model vs baselines",
    "sweep_trials": "Sweep: metric per trial",
    "sweep_params": "Sweep: metric per parameter",
    "sweep_curves": "Sweep: validation metric per epoch of each trial",
}


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


