"""The artifact folder of ``pinsage predict``: its file names, manifest, titles, digests and the
atomic swap.  This module is the one owner of the format; the writer (:mod:`app.artifacts`,
:mod:`app.inductive`) and the readers (:class:`app.recommend.Recommender`, the inductive
embedder, ``pinsage serve``, ``pinsage report``) spell file names and manifest keys through it.

The folder (``artifacts.output_dir`` in the config, default ``artifacts/<dataset>``) holds:

* ``embeddings.npy``: ``float32 [num_items, d]``, row i = dense item index i;
* ``items.csv``: ``index,id,title`` (title empty where the dataset has none), and ``categories``
  (names joined by ``|``) and ``year`` where the dataset has them; cells are CSV-formula safe
  (:func:`safe_title`, undone by :func:`read_title`);
* ``users.npz``: every user's raw id (``user_ids``) and the items of their whole log (CSR ``ptr``,
  ``items``, each user's in time order), the model's user-encoder matrix (``encoder``), and, for a
  model trained with ``model.user_id_embedding``, its user-id table (:data:`USER_ID_TABLE`,
  ``float32 [num_users, d]``, row ``u`` = the user ``user_ids[u]``; absent otherwise), for
  ``pinsage recommend --user``;
* ``index.faiss``: the FAISS index (``artifacts.index``: exact | hnsw | ivfpq | auto);
* ``neighbours.npy``: every item's top-K similar items from the index (``int32 [count, K]``);
* ``metrics.json`` (when ``artifacts.evaluate``): every evaluation protocol on the test split;
* the inductive files (``model.pt``, ``layer_<k>.npy``, ``walk_graph.npz``, ``neighbourhoods.npz``,
  ``features.json``; see :mod:`app.inductive`);
* ``manifest.json``: ``format``, ``dataset``, ``count``, ``dims``, ``index``, ``checkpoint``,
  ``num_layers``, ``num_neighbors``, ``created``, ``config``, ``inductive`` and ``neighbours``
  blocks, ``files`` (every file of the folder) and ``checksums`` (size and SHA-256 of every other
  file, verified at load by :func:`verify_checksums`).

The folder is written under a temporary name beside the target and renamed into place at the
end (:func:`publish`), so a crash never leaves a half-written set.  Only an artifact folder (its
manifest says ``"format": "pinsage-artifacts"`` and lists every file in it), or an empty folder,
is ever replaced (:func:`check_output_dir`).  Temporary folders left by a killed predict (named
with its process id) are removed by the next run (:func:`clean_stale_temps`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

FORMAT = "pinsage-artifacts"
ARTIFACTS_FORMAT = FORMAT  # the older name
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
ITEMS = "items.csv"
USERS = "users.npz"
#: the ``users.npz`` key of the model's per-user vectors ``e_u`` (``model.user_id_embedding``;
#: :class:`models.user_encoder.UserEncoder`), rows in the order of its ``user_ids``
USER_ID_TABLE = "user_id_embedding"
INDEX = "index.faiss"
METRICS = "metrics.json"
NEIGHBOURS = "neighbours.npy"
MODEL = "model.pt"
WALK_GRAPH = "walk_graph.npz"
NEIGHBOURHOODS = "neighbourhoods.npz"
FEATURES = "features.json"
#: the inductive files besides the per-layer tables (:func:`layer_file`)
INDUCTIVE_FILES = (MODEL, WALK_GRAPH, NEIGHBOURHOODS, FEATURES)
#: first characters a spreadsheet reads as a formula (CSV injection); such a title is written with a
#: leading ``'`` (and a title starting with ``'`` gets one more), undone by :func:`read_title`
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


class ArtifactError(ValueError):
    """Missing, truncated or inconsistent artifacts, or an unknown id."""


def layer_file(k: int) -> str:
    """The file of the layer-``k`` vectors of every item (an inductive file)."""
    return f"layer_{k}.npy"


def safe_title(title: str) -> str:
    return "'" + title if title.startswith(_FORMULA_START) else title


def read_title(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell


# ----------------------------------------------------------------------------------------------
# items.csv
# ----------------------------------------------------------------------------------------------
@dataclass
class ItemRows:
    """The columns of ``items.csv`` as read back (titles decoded; ``None``: column absent)."""

    ids: List[str]
    titles: List[str]
    categories: Optional[List[str]] = None
    years: Optional[List[str]] = None


def write_items(path: Path, ids: Sequence, titles: Optional[Sequence], categories: Optional[Sequence[str]],
                years: Optional[Sequence[str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "id", "title"] + (["categories"] if categories else []) + (["year"] if years else []))
        for i, raw in enumerate(ids):
            w.writerow([i, safe_title(str(raw)), "" if titles is None else safe_title(str(titles[i]))]
                       + ([safe_title(categories[i])] if categories else []) + ([years[i]] if years else []))


def read_items(folder: Path) -> ItemRows:
    """``items.csv`` of ``folder``; raises :class:`ArtifactError` naming the file when unreadable."""
    path = Path(folder) / ITEMS
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        cols = rows[0].keys() if rows else ()
        return ItemRows(ids=[read_title(r["id"]) for r in rows], titles=[read_title(r["title"] or "") for r in rows],
                        categories=[read_title(r["categories"] or "") for r in rows] if "categories" in cols else None,
                        years=[r["year"] or "" for r in rows] if "year" in cols else None)
    except (OSError, KeyError, UnicodeDecodeError, csv.Error) as e:
        raise ArtifactError(f"{path} cannot be read ({type(e).__name__}: {e}): re-run `pinsage predict`") from None


# ----------------------------------------------------------------------------------------------
# manifest.json and digests
# ----------------------------------------------------------------------------------------------
def file_digest(path: Path) -> Dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of one file (read in 8 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def write_manifest(folder: Path, fields: Dict[str, Any]) -> dict:
    """Write ``folder/manifest.json``: ``fields`` plus ``format``, ``files`` and ``checksums`` of
    every file already in ``folder``; returns the manifest."""
    folder = Path(folder)
    manifest = {"format": FORMAT, **fields,
                "files": sorted(p.name for p in folder.iterdir()) + [MANIFEST],
                "checksums": {p.name: file_digest(p) for p in sorted(folder.iterdir())}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


def read_manifest(folder: Path, flag: str = "--artifacts") -> dict:
    """``folder/manifest.json`` with integer ``count`` and ``dims``; raises :class:`ArtifactError`."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{flag} {str(folder)!r} has no {MANIFEST}: run `pinsage predict` first")
    try:
        man = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}): the artifacts are corrupt; re-run `pinsage predict`") from None
    missing = [k for k in ("count", "dims") if not isinstance(man, dict) or not isinstance(man.get(k), int)]
    if missing:
        raise ArtifactError(f"{path} has no integer {' / '.join(repr(k) for k in missing)}: the artifacts are "
                            "corrupt or not from `pinsage predict`; re-run it")
    return man


def verify_checksums(folder: Path, manifest: dict) -> None:
    """Sizes and SHA-256 checksums recorded by predict (manifests without them: skipped)."""
    for name, want in (manifest.get("checksums") or {}).items():
        path = Path(folder) / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing (listed in {MANIFEST}): re-run `pinsage predict`")
        size = path.stat().st_size
        if size != want.get("size"):
            raise ArtifactError(f"{path} has {size} bytes, {MANIFEST} says {want.get('size')}: the file is "
                                "truncated or replaced; re-run `pinsage predict`")
        if file_digest(path)["sha256"] != want.get("sha256"):
            raise ArtifactError(f"{path} fails its SHA-256 check ({MANIFEST}): the file is corrupt; "
                                "re-run `pinsage predict`")


def looks_like_artifacts(folder: Path) -> bool:
    """A folder with a manifest and embeddings (what ``pinsage report`` accepts as artifacts)."""
    return (Path(folder) / MANIFEST).is_file() and (Path(folder) / EMBEDDINGS).is_file()


def is_artifact_folder(folder: Path) -> bool:
    """True when ``folder/manifest.json`` marks it as written by predict and it holds nothing else."""
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        return False
    listed = set(man.get("files", []))
    return all(p.name in listed for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------
# the output folder: refusal, stale temps, the atomic swap
# ----------------------------------------------------------------------------------------------
def check_output_dir(output_dir: str) -> Path:
    """Refuse (ValueError) an output folder that is not ours to replace; called before any work."""
    out = Path(output_dir)
    if out.resolve() == Path.cwd().resolve() or out.resolve() == Path(out.resolve().anchor):
        raise ValueError(f"--artifacts.output_dir {output_dir!r} is the current folder or the root: predict "
                         "replaces its output folder as a whole; name a folder of its own (e.g. artifacts/<dataset>)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--artifacts.output_dir {output_dir!r} is a file: name a folder")
    if out.is_dir() and any(out.iterdir()) and not is_artifact_folder(out):
        raise ValueError(f"--artifacts.output_dir {output_dir!r} exists and is not an artifact folder written by "
                         f"`pinsage predict` (no {MANIFEST} saying so): predict replaces its output folder as a "
                         "whole, so it only replaces its own; choose a new or empty folder")
    return out


def clean_stale_temps(out: Path) -> List[Path]:
    """Remove temp/old folders of earlier predicts into ``out`` whose process is gone."""
    removed: List[Path] = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*"):
        parts = p.name[len(out.name) + 2:].split(".")
        # ours: .<name>.<pid>.<random>.tmp (being written) and .<name>.old-<pid> (being swapped)
        pid = parts[0] if p.name.endswith(".tmp") else (parts[0][4:] if parts[0].startswith("old-") else "")
        if not p.is_dir() or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def temp_prefix(out: Path) -> str:
    """The name prefix of a folder being written for ``out`` (what :func:`clean_stale_temps` knows)."""
    return f".{out.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: Path, out: Path) -> None:
    """Give ``tmp`` and its files the umask's permissions, then rename it to ``out``; an existing
    ``out`` (an artifact folder or an empty one, checked again here) is moved aside first and
    removed after."""
    mode = 0o666 & ~_umask()
    for p in tmp.iterdir():
        os.chmod(p, mode)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: a serving account could not read it
    check_output_dir(str(out))
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
