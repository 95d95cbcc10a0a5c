"""Named datasets: read, split, build the training graph, pairs and features; cache on disk.

``load_dataset(dataset, root, ...)`` is the one entry point. The first call parses the raw files
and writes the cache folder ``<cache_dir>/<dataset>-<key>/``: one plain ``.npy`` file per array
(CSR graph in both directions, features, pairs, id maps, split rows) and ``manifest.json`` (format
name, format version, metadata, and per array its dtype, shape, byte size and the SHA-256 of
every byte). Later calls with the same files and arguments open the arrays with
``mmap_mode="r"``: loading takes well under a second whatever the size, the pages are read on
demand, and forked DataLoader workers share them (nothing is pickled into workers).

Cache rules (the folder's format, its streaming writer and checked opener live in
:mod:`datamodules.dataset_cache`; the key and what goes in are this module's):

* the key hashes *every* argument of :func:`load_dataset` that shapes the data (all of them but
  ``root``, ``cache_dir``, ``use_cache``, ``progress``: a new argument enters the key by itself)
  plus, for each input file, its resolved path, size and a SHA-256 of the whole file (a file
  replaced by another of the same size and mtime, or edited in the middle, is noticed); digests are
  remembered in ``<cache_dir>/digests.json`` while the file provably did not change
  (``datamodules.digests``), so a warm start does not re-read the inputs;
* every array is checked against its whole-file digest when the cache is opened (remembered the
  same way: a flipped byte anywhere is noticed, a warm open reads nothing);
* writing is atomic: a temp folder beside the target, then one ``rename``; two processes building
  the same cache at once (DDP ranks, nodes on shared storage) both succeed and one copy stays;
* a cache of another format version, or a damaged one (bad manifest, missing or truncated array,
  digest mismatch), is reported on stderr and rebuilt, never a traceback.

The cold build streams: :class:`CacheWriter` writes each array into the temp folder as soon as the
build has it (log, split rows, pairs, graph, features, in that order) and the build goes on with
a read-only memory map of the file; every pass over the log runs one chunk at a time
(``datamodules.chunks``) and skips its sort when the log is already grouped by user in time
order (the synthetic generator's). Peak RSS is then the working set of one stage (~50 bytes per
edge measured at 100M edges, resident cache pages included), not several copies of the log
(``benchmarks/SCALE.md``).

Supported names (``DATASETS``): ``movielens-100k``, ``movielens-1m`` (PyG raw layouts),
``gowalla``, ``yelp2018``, ``amazon-book`` (LightGCN split), ``ncf-ml-1m``, ``ncf-pinterest``
(NCF split), ``movielens-latest-small`` and ``table`` (a user's own CSV/Parquet log), ``synthetic``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import chunks
from .graph import InteractionGraph
from .interactions import DataError, Interactions, ItemTable
from .cold import check_cold, cold_holdout
from .dataset_cache import (  # noqa: F401 (CACHE_FORMAT, CACHE_VERSION, MANIFEST: re-exported, as before the split)
    CACHE_FORMAT, CACHE_VERSION, MANIFEST, CacheError, CacheWriter, default_cache_dir, open_cache)
from .digests import DigestMemo
from .splits import Split, announce_split, check_split, check_split_seed, split_and_pairs

#: load_dataset arguments that do not shape the data (everything else enters the cache key)
_NOT_IN_KEY = ("root", "cache_dir", "use_cache", "progress", "announce")
# cached arrays are read-only memory maps on purpose (nothing may write into the cache); torch only
# reads the tensors it wraps around them, so its "not writable" warning is noise here
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass
class DatasetSpec:
    """How to find and read one named dataset."""

    folder: str  # sub-folder of the data root
    files: List[str]  # files that must exist in the resolved folder
    reader: Callable[..., Any]
    source: str  # where the data comes from (for error messages)
    sub: str = "raw"  # folder inside <root>/<folder> holding the files
    reader_defaults: Dict[str, Any] = field(default_factory=dict)


def _readers():
    from . import readers

    return readers


def _specs() -> Dict[str, DatasetSpec]:
    r = _readers()
    lightgcn = lambda name: DatasetSpec(  # noqa: E731
        name, ["train.txt", "test.txt"], r.read_lightgcn,
        f"the LightGCN authors' {name} split (github.com/kuandeng/LightGCN, Data/{name}/)")
    return {
        "movielens-100k": DatasetSpec("movielens-100k", ["u.data", "u.item"], r.read_movielens_100k,
                                      "GroupLens ml-100k.zip (grouplens.org/datasets/movielens/100k)"),
        "movielens-1m": DatasetSpec("movielens-1m", ["ratings.dat", "movies.dat"], r.read_movielens_1m,
                                    "GroupLens ml-1m.zip (grouplens.org/datasets/movielens/1m)"),
        "gowalla": lightgcn("gowalla"),
        "yelp2018": lightgcn("yelp2018"),
        "amazon-book": lightgcn("amazon-book"),
        "ncf-ml-1m": DatasetSpec("ncf-ml-1m", ["ml-1m.train.rating", "ml-1m.test.rating"], r.read_ncf,
                                 "the NCF authors' Data/ folder (github.com/hexiangnan/neural_collaborative_filtering)",
                                 reader_defaults={"name": "ml-1m"}),
        "ncf-pinterest": DatasetSpec("ncf-pinterest", ["pinterest-20.train.rating", "pinterest-20.test.rating"], r.read_ncf,
                                     "the NCF authors' Data/ folder (github.com/hexiangnan/neural_collaborative_filtering)",
                                     reader_defaults={"name": "pinterest-20"}),
        "movielens-latest-small": DatasetSpec(
            "movielens-latest-small", ["ratings.csv"], _read_table, "GroupLens ml-latest-small.zip",
            sub="raw/ml-latest-small",
            reader_defaults=dict(path="ratings.csv", header=False, columns=["userId", "movieId", "rating", "timestamp"],
                                 user_col="userId", item_col="movieId", time_col="timestamp", weight_col="rating",
                                 items_path="movies.csv", items_header=False, items_columns=["movieId", "title", "genres"],
                                 item_id_col="movieId", title_col="title", categories_col="genres")),
        "table": DatasetSpec("", [], _read_table, "your own interaction log (reader_args.path)", sub=""),
    }


def _read_table(folder: Path, path: str, items_path: Optional[str] = None, **kw) -> Interactions:
    r = _readers()
    p = Path(path) if Path(path).is_absolute() else Path(folder) / path
    ip = None
    if items_path is not None:
        ip = Path(items_path) if Path(items_path).is_absolute() else Path(folder) / items_path
    return r.read_table_log(p, items_path=ip, **kw)


DATASET_NAMES = (
    "movielens-100k", "movielens-1m", "gowalla", "yelp2018", "amazon-book", "ncf-ml-1m", "ncf-pinterest",
    "movielens-latest-small", "table", "synthetic",
)


@dataclass
class RecDataset:
    """Everything the sampler, the model and the evaluator need from one dataset.

    Attributes:
        name: dataset name.
        interactions: the full log (dense ids, item metadata).
        split: row indices of train / val / test interactions.
        train_graph: the bipartite graph of the *training* interactions only.
        train_pairs, val_pairs, test_pairs: ``int64 [P, 2]`` item pairs (q, i).
        item_features: ``float32 [I, F]`` (F may be 0), ``feature_names`` their names.
        has_content: ``bool [I]`` whether an item has any content feature (else it needs an ID
            embedding to be told apart).
        extras: dataset-specific arrays (e.g. ``item_community`` for synthetic data,
            ``test_negatives`` for the NCF split).
    """

    name: str
    interactions: Interactions
    split: Split
    train_graph: InteractionGraph
    train_pairs: np.ndarray
    val_pairs: np.ndarray
    test_pairs: np.ndarray
    item_features: np.ndarray
    feature_names: List[str]
    has_content: np.ndarray
    extras: Dict[str, np.ndarray] = field(default_factory=dict)
    #: the cache folder it was loaded from (None when built without the cache); files that belong
    #: to this dataset's cache key live beside it (e.g. the tuned baselines, ``<folder>.baselines.json``)
    cache_path: Optional[Path] = None

    @property
    def num_users(self) -> int:
        return self.interactions.num_users

    @property
    def num_items(self) -> int:
        return self.interactions.num_items

    def item_titles(self) -> Optional[np.ndarray]:
        t = self.interactions.item_table
        return None if t is None else t.titles

    def split_user_items(self, part: str):
        """``(users, items)`` of the held-out interactions of ``part`` in {"train","val","test"}."""
        rows = getattr(self.split, part)
        return self.interactions.users[rows], self.interactions.items[rows]

    def summary(self) -> dict:
        s = self.split.sizes()
        return {
            "dataset": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": self.interactions.num_interactions,
            "num_train": s["train"],
            "num_val": s["val"],
            "num_test": s["test"],
            "num_train_pairs": int(self.train_pairs.shape[0]),
            "num_val_pairs": int(self.val_pairs.shape[0]),
            "num_test_pairs": int(self.test_pairs.shape[0]),
            "num_features": int(self.item_features.shape[1]),
            "features": _feature_groups(self.feature_names),
            "has_timestamps": self.interactions.timestamps is not None,
            "num_duplicates_dropped": self.interactions.num_duplicates_dropped,
            "num_catalogue_items_without_interactions": self.interactions.num_catalogue_items_without_interactions,
        }

    # -- persistence -------------------------------------------------------------------------
    def to_arrays(self) -> Dict[str, np.ndarray]:
        it = self.interactions
        a: Dict[str, np.ndarray] = {
            "users": it.users, "items": it.items,
            "user_ids": _portable(it.user_ids), "item_ids": _portable(it.item_ids),
            "split_train": self.split.train, "split_val": self.split.val, "split_test": self.split.test,
            "train_pairs": self.train_pairs, "val_pairs": self.val_pairs, "test_pairs": self.test_pairs,
            "item_features": self.item_features, "has_content": self.has_content,
        }
        for k in ("timestamps", "weights", "is_test"):
            v = getattr(it, k)
            if v is not None:
                a[k] = v
        t = it.item_table
        if t is not None:
            if t.titles is not None:
                a["item_titles"] = _portable(t.titles)
            if t.categories is not None:
                a["item_categories"] = t.categories
            if t.years is not None:
                a["item_years"] = t.years
        for k, v in self.extras.items():
            a[f"extra_{k}"] = v
        a.update(self.train_graph.to_arrays("graph_"))
        return a

    def meta(self) -> dict:
        it = self.interactions
        return {
            "name": self.name,
            "feature_names": self.feature_names,
            "category_names": [] if it.item_table is None else it.item_table.category_names,
            "has_item_table": it.item_table is not None,
            "num_duplicates_dropped": it.num_duplicates_dropped,
            "num_catalogue_items_without_interactions": it.num_catalogue_items_without_interactions,
        }

    @classmethod
    def from_arrays(cls, a, meta: dict) -> "RecDataset":
        g = lambda k: a[k] if k in a else None  # noqa: E731
        table = None
        if meta["has_item_table"]:
            table = ItemTable(ids=a["item_ids"], titles=_unportable(g("item_titles")),
                              category_names=meta["category_names"], categories=g("item_categories"),
                              years=g("item_years"))
        inter = Interactions(
            users=a["users"], items=a["items"], user_ids=a["user_ids"], item_ids=a["item_ids"],
            timestamps=g("timestamps"), weights=g("weights"), is_test=g("is_test"), item_table=table,
            num_duplicates_dropped=meta["num_duplicates_dropped"],
            num_catalogue_items_without_interactions=meta["num_catalogue_items_without_interactions"],
        )
        extras = {k[len("extra_"):]: a[k] for k in a if k.startswith("extra_")}
        return cls(
            name=meta["name"], interactions=inter,
            split=Split(a["split_train"], a["split_val"], a["split_test"]),
            train_graph=InteractionGraph.from_arrays(a, "graph_"),
            train_pairs=a["train_pairs"], val_pairs=a["val_pairs"], test_pairs=a["test_pairs"],
            item_features=a["item_features"], feature_names=list(meta["feature_names"]),
            has_content=a["has_content"], extras=extras,
        )

    def save(self, path: Path, writer: Optional["CacheWriter"] = None) -> None:
        """Write the cache folder ``path`` atomically: a temp folder beside it, then ``rename``.

        ``writer``: the :class:`CacheWriter` the build already streamed some arrays into (they are
        not written again). If ``path`` appears meanwhile (another process built it), a valid copy
        is kept and the temp folder removed; a damaged one is replaced.
        """
        w = writer if writer is not None else CacheWriter(path)
        try:
            arrays = self.to_arrays()
            for name, arr in arrays.items():
                if name not in w.entries:
                    w.put(name, arr)
            w.finish(self.meta(), order=list(arrays))
        except BaseException:
            w.abort()
            raise

    @classmethod
    def load(cls, path: Path, mmap: bool = True) -> "RecDataset":
        """Open a cache folder; arrays are read-only memory maps (``mmap=False``: read into RAM).

        Raises:
            CacheError: the folder is of another format version or damaged (the reason says how).
        """
        manifest, arrays = open_cache(Path(path), mmap)
        try:
            return cls.from_arrays(arrays, manifest["meta"])
        except (KeyError, TypeError, ValueError) as err:
            raise CacheError(f"the manifest's arrays or metadata are incomplete ({type(err).__name__}: {err})") from None


def _feature_groups(names: List[str]) -> Dict[str, int]:
    """``["log_degree", "text:0", "text:1"]`` -> ``{"log_degree": 1, "text": 2}``."""
    out: Dict[str, int] = {}
    for n in names:
        g = n.split(":", 1)[0]
        out[g] = out.get(g, 0) + 1
    return out


def _portable(arr: np.ndarray) -> np.ndarray:
    """Object/str arrays -> fixed-width unicode (npz without pickle)."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        return arr.astype(str)
    return arr


def _unportable(arr):
    return None if arr is None else arr.astype(object)


# -- resolution ----------------------------------------------------------------------------------
def resolve_folder(dataset: str, root: str | os.PathLike, spec: DatasetSpec) -> Path:
    """Find the folder holding ``spec.files``: ``<root>/<folder>/<sub>``, ``<root>/<sub>`` or ``<root>``."""
    root = Path(root).expanduser()
    candidates = [root / spec.folder / spec.sub, root / spec.sub, root] if spec.folder else [root]
    for c in candidates:
        if all((c / f).is_file() for f in spec.files):
            return c
    first = candidates[0]
    missing = [f for f in spec.files if not (first / f).is_file()]
    raise DataError(
        f"dataset {dataset!r}: missing file {missing[0]!r} in {str(first)!r} "
        f"(also looked in {[str(c) for c in candidates[1:]]}); the data comes from {spec.source}; "
        f"put the raw files there or pass --data.root pointing at the folder that holds '{spec.folder}/'"
    )


def _fingerprint(paths: List[Path], memo: DigestMemo) -> List[Any]:
    """Per input file its resolved path and ``<size>:<sha256 of every byte>``."""
    out = [[str(p.resolve()), memo.digest(p)] for p in paths]
    memo.save()
    return out



def load_dataset(
    dataset: str,
    root: str = "data",
    cache_dir: Optional[str] = None,
    features: Optional[List[str]] = None,
    split: str = "auto",
    reader_args: Optional[Dict[str, Any]] = None,
    use_cache: bool = True,
    progress: bool = False,
    split_seed: int = 0,
    cold_items: float = 0.0,
    cold_engagements: int = 3,
    cold_retrain: bool = False,
    announce: bool = True,
) -> RecDataset:
    """Load a named dataset (see module docstring), from cache when possible.

    Args:
        dataset: one of ``DATASET_NAMES``.
        root: the data root holding one folder per dataset (e.g. ``../shared/data``), or the
            dataset folder itself.
        cache_dir: where parsed datasets are cached (default ``$PINSAGE_CACHE`` or
            ``~/.cache/pinsage``).
        features: item features to build (see ``datamodules.features``); ``None`` = the
            dataset's defaults (all content it has, plus log degree).
        split: ``auto`` (the dataset's own split if it has one, else temporal with timestamps,
            else random), ``temporal``, ``random``, ``fixed`` (see ``datamodules.splits``).
        reader_args: format options (``table``: path, columns...; ``synthetic``: sizes, seed).
        use_cache: read and write the cache.
        progress: report progress on stderr.
        split_seed: seed of the random split / random validation rows / held-out queries.
        cold_items: the share of items held out of training entirely for the cold-item protocol
            (:mod:`datamodules.cold`; 0 = none); ``cold_engagements`` early engagements per cold
            item are kept for the evaluator (and, with ``cold_retrain``, trained on).
        announce: say on stderr what ``split: auto`` chose (``False``: the caller says it).
    """
    # every argument that shapes the data enters the cache key (new ones automatically)
    key_parts: Dict[str, Any] = {k: v for k, v in locals().items() if k not in _NOT_IN_KEY}
    key_parts["reader_args"] = dict(reader_args or {})
    if dataset not in DATASET_NAMES:
        raise ValueError(f"dataset={dataset!r} is not known; choose one of {list(DATASET_NAMES)}")
    reader_args = dict(reader_args or {})
    log = _Progress(progress)
    check_split(split)
    split_seed = check_split_seed(split_seed)
    key_parts["split_seed"] = split_seed
    cold = check_cold(cold_items, cold_engagements) + (bool(cold_retrain),)
    if not cold[0]:  # no cold items: the key stays what it was before the option existed
        for k in ("cold_items", "cold_engagements", "cold_retrain"):
            key_parts.pop(k)
    source = None if dataset == "synthetic" else _Source.resolve(dataset, root, reader_args)
    cdir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if source is not None:
        key_parts["files"] = _fingerprint(source.files, DigestMemo(cdir if use_cache else None))
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cache_path = cdir / f"{dataset}-{key}"
    if use_cache and (cache_path.exists() or cache_path.is_symlink()):
        log(f"loading {dataset} from cache {cache_path}")
        try:
            ds = RecDataset.load(cache_path)
            announce_split(split, ds.interactions, split_seed, dataset, announce)
            ds.cache_path = cache_path
            return ds
        except CacheError as err:
            print(f"pinsage: the dataset cache {cache_path} is unusable ({err}); rebuilding it",
                  file=sys.stderr, flush=True)
    return _build_and_cache(dataset, source, reader_args, cache_path if use_cache else None, cdir, log,
                            features=features, split=split, split_seed=split_seed, announce=announce, cold=cold)


@dataclass
class _Source:
    """A named dataset's files: its spec, the folder they are in, the reader's arguments, every input."""

    spec: DatasetSpec
    folder: Path
    args: Dict[str, Any]
    files: List[Path]

    @classmethod
    def resolve(cls, dataset: str, root, reader_args: Dict[str, Any]) -> "_Source":
        spec = _specs()[dataset]
        args = {**spec.reader_defaults, **reader_args}
        if dataset == "table" and "path" not in args:
            raise ValueError("dataset='table' needs reader_args.path (the CSV/Parquet interaction log)")
        folder = resolve_folder(dataset, root, spec) if spec.files else Path(root).expanduser()
        files = [folder / f for f in spec.files]
        for k in ("path", "items_path", "features_path"):
            if args.get(k):
                p = Path(args[k]) if Path(args[k]).is_absolute() else folder / args[k]
                if not p.is_file():
                    raise DataError(f"dataset {dataset!r}: reader_args.{k} file {str(p)!r} does not exist")
                files.append(p)
        return cls(spec, folder, args, files)


def _check_reader_args(dataset: str, reader, args: Dict[str, Any]) -> None:
    """A ValueError naming a ``reader_args`` key the dataset's reader does not take, and those it does."""
    def named(fn):  # the keyword options after the folder / path argument
        return [n for n, p in list(inspect.signature(fn).parameters.items())[1:] if p.kind is not p.VAR_KEYWORD]

    known = named(reader) + (named(_readers().read_table_log) if reader is _read_table else [])
    known = list(dict.fromkeys(known + ["features_path"]))
    bad = sorted(set(args) - set(known))
    if bad:
        raise ValueError(f"dataset {dataset!r} does not take reader_args.{bad[0]}; it takes {known}")


def _read_source(dataset: str, source: Optional[_Source], reader_args: Dict[str, Any], log):
    """``(interactions, external features or None, extras, default feature names)`` parsed from the
    dataset's files (or generated, for ``synthetic``)."""
    extras: Dict[str, np.ndarray] = {}
    external = None
    log(f"parsing {dataset} from {source.folder if source is not None else 'generator'}")
    if source is None:
        from .synthetic import make_synthetic

        inter, external, comm = make_synthetic(**reader_args)
        extras["item_community"] = comm
        default_features = ["log_degree", "external"]
    else:
        args, folder = dict(source.args), source.folder
        features_path = args.pop("features_path", None)
        _check_reader_args(dataset, source.spec.reader, args)
        inter = source.spec.reader(folder, **args)
        if features_path:
            fp = Path(features_path) if Path(features_path).is_absolute() else folder / features_path
            external, _mask = _readers().read_item_features(fp, inter.item_ids)
        default_features = _default_features(inter, external is not None)
    tn = getattr(inter, "test_negatives", None)
    if tn is not None:
        extras["test_negatives"] = tn
    return inter, external, extras, default_features


def _build_and_cache(dataset: str, source: Optional[_Source], reader_args: Dict[str, Any],
                     cache_path: Optional[Path], cdir: Path, log, *, features, split: str, split_seed: int,
                     announce: bool, cold: Tuple[float, int, bool]) -> RecDataset:
    """The cold path of :func:`load_dataset`: read, split and build, streamed into the cache folder
    ``cache_path`` (``None``: no cache) and handed out as its memory maps."""
    inter, external, extras, default_features = _read_source(dataset, source, reader_args, log)
    log(f"read {inter.num_interactions} interactions; splitting")
    announce_split(split, inter, split_seed, dataset, announce)
    # the build streams its arrays into the cache's temp folder as it makes them (CacheWriter)
    writer = CacheWriter(cache_path) if cache_path is not None else None
    try:
        ds = build_dataset(dataset, inter, split=split, split_seed=split_seed,
                           features=features if features is not None else default_features,
                           external=external, cache_dir=cdir, extras=extras,
                           store=None if writer is None else writer.put, log=log, cold=cold)
        del inter, external
        if writer is not None:
            ds.save(cache_path, writer)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if cache_path is not None:
        log(f"cached at {cache_path}")
        # hand out the memory-mapped copy: the build's RAM is freed and a first run behaves like
        # every later one (read-only arrays shared by forked workers)
        del ds
        ds = RecDataset.load(cache_path)
        ds.cache_path = cache_path
    return ds


def _default_features(inter: Interactions, has_external: bool) -> List[str]:
    feats = ["log_degree"]
    t = inter.item_table
    if t is not None:
        if t.categories is not None and t.categories.shape[1] > 0:
            feats.append("categories")
        if t.years is not None:
            feats.append("year")
    if has_external:
        feats.append("external")
    return feats


def build_dataset(
    name: str,
    inter: Interactions,
    split: str = "auto",
    features: Optional[List[str]] = None,
    external: Optional[np.ndarray] = None,
    cache_dir: Optional[Path] = None,
    extras: Optional[Dict[str, np.ndarray]] = None,
    split_seed: int = 0,
    store: Optional[Callable[[str, np.ndarray], np.ndarray]] = None,
    log: Optional[Callable[[str], None]] = None,
    cold: Tuple[float, int, bool] = (0.0, 3, False),
) -> RecDataset:
    """Split an :class:`Interactions` log and build graph, pairs and features (no caching).

    ``store(name, array) -> array`` (the cache's :meth:`CacheWriter.put`), when given, receives
    every large array as soon as it exists, under its cache name, and the build goes on with what
    it returns (a memory map of the written file): the build's RAM then holds one stage at a time.
    ``cold = (fraction, engagements, retrain)``: the cold-item holdout (:mod:`datamodules.cold`),
    stored as ``extras["cold_items"]``, ``["cold_early_rows"]``, ``["cold_case_rows"]``.
    """
    from .features import build_item_features

    keep = store or (lambda key, arr: arr)
    log = log or (lambda msg: None)
    if store is not None:  # the log itself first: the stages below read it from the page cache
        inter.users, inter.items = keep("users", inter.users), keep("items", inter.items)
        for k in ("timestamps", "weights", "is_test"):
            if getattr(inter, k) is not None:
                setattr(inter, k, keep(k, getattr(inter, k)))
    extras = dict(extras or {})
    exclude = train_extra = None
    if cold[0] > 0:
        c_items, early, cases = cold_holdout(inter, cold[0], cold[1], split_seed)
        extras.update(cold_items=c_items, cold_early_rows=early, cold_case_rows=cases)
        exclude, train_extra = np.union1d(early, cases), (early if cold[2] else None)
        log(f"cold items: {c_items.size} held out ({early.size} early engagements"
            f"{' trained on' if cold[2] else ''}, {cases.size} cases)")
    sp, train_pairs, val_pairs, test_pairs = split_and_pairs(inter, split, split_seed, store=store,
                                                             exclude=exclude, train_extra=train_extra)
    log(f"split {sp.sizes()}, {train_pairs.shape[0]} training pairs; building the graph")
    graph = InteractionGraph.from_edges(inter.users, inter.items, inter.num_users, inter.num_items,
                                        timestamps=inter.timestamps, weights=inter.weights, rows=sp.train)
    chunks.release(sp.train)
    if store is not None:
        graph = InteractionGraph.from_arrays({k: keep(k, v) for k, v in graph.to_arrays("graph_").items()}, "graph_")
    log(f"graph {graph}; item features")
    feats = list(features or [])
    x, names, has_content = build_item_features(
        inter, graph.item_degree(), feats, cache_dir=cache_dir, external=external)
    x = keep("item_features", np.ascontiguousarray(x, dtype=np.float32))
    return RecDataset(name=name, interactions=inter, split=sp, train_graph=graph, train_pairs=train_pairs,
                      val_pairs=val_pairs, test_pairs=test_pairs, item_features=x,
                      feature_names=names, has_content=has_content, extras=extras)


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[pinsage data {time.perf_counter() - self.t0:6.1f}s{_rss()}] {msg}", file=sys.stderr, flush=True)


def _rss() -> str:
    """`` RSS x GB (peak y GB)`` of this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
        return f", RSS {kb['VmRSS'] / 2**20:.2f} GB (peak {kb['VmHWM'] / 2**20:.2f})"
    except (OSError, KeyError, ValueError):
        return ""
