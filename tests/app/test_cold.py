"""The cold-item protocol (app/cold.py): ranks, and a fit -> test on a tiny synthetic graph whose
content is correlated with its communities, so content alone must beat chance."""

import io
import json
from contextlib import redirect_stdout

import numpy as np
import torch

from app.cold import cold_ranks


def test_cold_ranks_ties_count_against_the_target_and_masked_candidates_drop_out():
    cand = np.array([3, 5, 8, 9])
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [0.1, 0.9, 0.5, 0.5], [0.1, 0.9, 0.5, 0.2]])
    r = cold_ranks(scores, cand, np.array([8, 5, 8]), [np.array([], dtype=int), np.array([], dtype=int),
                                                       np.array([1])])
    assert r.tolist() == [3, 1, 1]  # 8 ties with 9 (counts against it); case 3 masks item 5


def test_fit_then_test_reports_the_cold_rows(tmp_path, tiny_args):
    from app.cli import main

    args = tiny_args(tmp_path) + ["--data.queries", "users", "--data.cold_items", "0.1", "--model.cold_dropout", "0.2"]
    assert main(["fit", *args, "--trainer.max_epochs=2"]) == 0
    last = next(tmp_path.rglob("last.ckpt"))
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["test", *args, "--ckpt_path", str(last)]) == 0
    out = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert out["cold/num_items"] == 40 and out["cold/num_cases"] > 100
    for name in ("pinsage-content-only", "pinsage-3-engagements", "popularity", "popularity-oracle"):
        assert 0 <= out[f"{name}/cold/hit@10"] <= 1
    # 10 of 40 candidates: chance is ~0.25; the planted communities make content informative
    assert out["pinsage-content-only/cold/hit@10"] > out["popularity/cold/hit@10"] + 0.15
