"""issue 20 item 14: a catalogue of 60-120 items could not `test`/`predict` (the NCF protocol's 99
negatives failed after all the work, naming an option that does not exist)."""

import numpy as np
import pytest
import torch

from app.evaluation import evaluate
from datamodules.datasets import load_dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    rows = ["user,item,time"] + [f"{u},{i},{t}" for t, (u, i) in enumerate(
        zip(rng.integers(0, 50, 900), rng.integers(0, 80, 900)))]
    (d / "log.csv").write_text("\n".join(rows) + "\n")
    return load_dataset("table", root=str(d), cache_dir=str(d / "cache"),
                        reader_args={"path": "log.csv", "user_col": "user", "item_col": "item", "time_col": "time"})


def test_ncf_on_a_small_catalogue_samples_fewer_negatives_with_a_warning(small, capsys):
    ds = small
    assert ds.num_items <= 80
    emb = torch.nn.functional.normalize(torch.randn(ds.num_items, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    out = evaluate(ds, emb, part="test", protocols=["ncf"], ks=[10], baselines=["popularity"])
    err = capsys.readouterr().err
    assert "num_sampled_negatives" not in err and "99" in err and "warning" in err
    # as many negatives as the test user with the fewest unseen items has (not 99, not a failure)
    users, _ = ds.split_user_items("test")
    seen = np.bincount(ds.interactions.users, minlength=ds.num_users)  # the log holds no duplicates
    fewest = int((ds.num_items - seen)[np.unique(users)].min())
    assert seen.max() > ds.num_items - 99  # the published 99 would not fit
    assert int(out["ncf/num_candidates"]) - 1 == fewest
    assert f"{fewest} items they never interacted with" in err
    assert "popularity/ncf/hr@10" in out and "pinsage/ncf/hr@10" in out
