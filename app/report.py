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
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from .projection import MAP_METHODS, ProjectionError
from .report_figures import FIGURE_CAPTIONS, _plt, gallery_rows, make_figures, metric_table
# the readers, importable from here as before (the figures: app/report_figures.py)
from .report_inputs import (ReportError, ReportInputs, _datamodule_from_config, _log, fit_report_inputs,  # noqa: F401
                            item_labels, load_artifacts, load_inputs, read_history, wandb_records)


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
