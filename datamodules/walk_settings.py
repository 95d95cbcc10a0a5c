"""How importance neighbourhoods are walked, as one object (:class:`WalkSettings`) that goes from the
DataModule (:meth:`datamodules.datamodule.PinSageDataModule.walk_settings`) through predict's
``manifest.json`` (its ``inductive.walks`` block) to the inductive embedder of new items.

T, the neighbourhood size, is ``num_neighbors`` everywhere (the DataModule's argument); K, the
number of layers, is ``num_layers``.  The DataModule validates the values (the edge); this object
only carries them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WalkSettings:
    """``num_walks`` walks of at most ``walk_length`` hops, each ending with ``restart_prob`` after a
    hop; the top ``num_neighbors`` (T) items by visit count; ``seed`` of the walks; ``weighted``:
    hops proportional to interaction weights (:mod:`datamodules.walks`)."""

    num_walks: int
    walk_length: int
    restart_prob: float
    num_neighbors: int
    seed: int = 0
    weighted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WalkSettings":
        """From a manifest's ``walks`` block; folders written before this object say ``top_t`` for
        ``num_neighbors`` and have no ``weighted`` (they were walked uniformly by the embedder)."""
        t = d["num_neighbors"] if "num_neighbors" in d else d["top_t"]
        return cls(num_walks=int(d["num_walks"]), walk_length=int(d["walk_length"]),
                   restart_prob=float(d["restart_prob"]), num_neighbors=int(t), seed=int(d.get("seed", 0)),
                   weighted=bool(d.get("weighted", False)))
