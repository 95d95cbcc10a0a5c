"""model.user_id_embedding through the CLI: num_users is linked from the data, item-query
training refuses it, and predict carries the user-id table into users.npz, which
``recommend --user`` (and so ``serve``) adds to a known user's vector as the model does."""

import json
import shutil
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from app import artifact_format as fmt
from app.artifacts import _write_users
from app.cli import main
from datamodules import chunks
from tests.app.conftest import TINY

UID_ARGS = ["--data.queries", "users", "--model.loss", "softmax", "--model.user_id_embedding", "true",
            "--model.val_protocols", "[item,full]"]


@pytest.fixture(scope="module")
def uid_run(tmp_path_factory):
    """``(args, last_ckpt)`` of a 1-epoch fit of the tiny graph with user queries and a user-id table."""
    root = tmp_path_factory.mktemp("uid-run")
    args = TINY + ["--data.cache_dir", str(root / "cache"), "--trainer.default_root_dir", str(root), *UID_ARGS]
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    return args, root / "checkpoints" / "last.ckpt"


def _log(num_users=5):
    users = np.array([3, 0, 1, 3, 4, 2, 0, 1, 4, 2, 3])
    return SimpleNamespace(users=users, items=np.arange(users.size) % 7, timestamps=None, num_users=num_users,
                           num_items=7, user_ids=np.array([f"u{i}" for i in range(num_users)], dtype=object))


def _module_with_table(rows, dims, seed=0):
    emb = torch.nn.Embedding(rows, dims)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, dims)).astype(np.float32)))
    return SimpleNamespace(user_encoder=SimpleNamespace(lin=None, user_emb=emb)), emb.weight.detach().numpy()


def test_users_npz_holds_the_user_id_table_in_user_order(tmp_path, monkeypatch):
    """Written chunk by chunk, the bytes np.save writes for the table, row u beside user_ids[u]."""
    monkeypatch.setattr(chunks, "ROWS", 2)  # several chunks
    module, table = _module_with_table(5, 3)
    _write_users(tmp_path, SimpleNamespace(interactions=_log()), module, 3)
    got = np.load(tmp_path / fmt.USERS)
    assert got.files == ["user_ids", "ptr", "items", "encoder", fmt.USER_ID_TABLE]
    assert got[fmt.USER_ID_TABLE].dtype == np.float32 and np.array_equal(got[fmt.USER_ID_TABLE], table)
    assert got["user_ids"].tolist() == ["u0", "u1", "u2", "u3", "u4"]
    np.save(tmp_path / "ref.npy", table)
    with zipfile.ZipFile(tmp_path / fmt.USERS) as zf:
        assert zf.read(fmt.USER_ID_TABLE + ".npy") == (tmp_path / "ref.npy").read_bytes()


def test_a_user_id_table_of_another_log_is_refused(tmp_path):
    module, _ = _module_with_table(4, 3)
    with pytest.raises(ValueError, match=r"user-id table has shape \(4, 3\), the dataset has 5 users .* "
                                         r"expected \(5, 3\)"):
        _write_users(tmp_path, SimpleNamespace(interactions=_log()), module, 3)


def _with_table(folder, dst, table):
    """A copy of the artifact folder ``folder`` whose users.npz carries ``table`` (checksums redone)."""
    shutil.copytree(folder, dst)
    users = dict(np.load(dst / fmt.USERS))
    np.savez(dst / fmt.USERS, **users, **{fmt.USER_ID_TABLE: table})
    man = json.loads((dst / fmt.MANIFEST).read_text())
    (dst / fmt.MANIFEST).unlink()
    fmt.write_manifest(dst, {k: v for k, v in man.items() if k not in ("format", "files", "checksums")})
    return users


def test_recommend_adds_a_known_users_row_and_not_a_posted_historys(artifacts, tmp_path):
    """Against numpy's p_u = normalise(normalise(W_u sum) + e_u): recommend's vector of a user of
    users.npz adds their row of the table; a posted history (no user id) does not; artifacts
    without a table (older ones) are scored from the history alone."""
    from app.recommend import Recommender

    def unit(x):
        return x / np.linalg.norm(x)

    emb = np.load(artifacts / fmt.EMBEDDINGS)
    table = np.random.default_rng(0).standard_normal((300, emb.shape[1])).astype(np.float32)
    users = _with_table(artifacts, tmp_path / "uid", table)
    rec, old = Recommender(str(tmp_path / "uid")), Recommender(str(artifacts))
    ptr, items, w = users["ptr"], users["items"], users["encoder"]
    for u in (0, 7, 299):
        seen = items[ptr[u]:ptr[u + 1]]
        hist = unit(w @ emb[seen].sum(0))
        np.testing.assert_allclose(rec.user_vector(seen, u), unit(hist + table[u]), atol=TOL)
        np.testing.assert_allclose(rec.user_vector(seen), hist, atol=TOL)
        np.testing.assert_allclose(old.user_vector(seen, u), hist, atol=TOL)
        raw = str(users["user_ids"][u])
        got = rec.for_user(raw, 5)["items"]
        ids, scores = _expected(unit(hist + table[u]), emb, seen, 5)
        assert [g["id"] for g in got] == [rec.item_ids[i] for i in ids]
        np.testing.assert_allclose([g["score"] for g in got], scores, atol=TOL)
        posted = rec.for_history([rec.item_ids[i] for i in seen], 5)["items"]
        assert [g["id"] for g in posted] == [g["id"] for g in old.for_user(raw, 5)["items"]]


def test_a_user_id_table_of_the_wrong_shape_is_an_artifact_error(artifacts, tmp_path):
    from app.artifact_format import ArtifactError
    from app.recommend import Recommender

    _with_table(artifacts, tmp_path / "bad", np.zeros((299, 16), dtype=np.float32))
    with pytest.raises(ArtifactError, match=r"user_id_embedding has shape \(299, 16\): expected \(300, 16\)"):
        Recommender(str(tmp_path / "bad")).for_user("0", 5)


TOL = 1e-5  # float32 rounding of one dot product of unit vectors (FAISS's vs numpy's)


def _module(ckpt_path):
    from models.module import PinSageModule

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    m = PinSageModule(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    m.load_state_dict(ckpt["state_dict"])
    return m.eval()


def _expected(vectors, emb, seen, k):
    """``(ids, scores)``: the top-``k`` of ``vectors [d] . emb`` with ``seen`` excluded, exactly."""
    s = emb @ vectors
    s[seen] = -np.inf
    top = np.argsort(-s, kind="stable")[:k]
    return top, s[top]


@pytest.mark.slow  # a 1-epoch fit of the tiny graph with user queries (shared), predict and test: 7-20 s
def test_user_id_table_end_to_end(uid_run, tmp_path, capsys):
    """fit -> predict -> recommend --user: the table in users.npz is the model's, a known user's
    answer is the module's own user vector (e_u included) against the item embeddings, a history
    posted for a new user gets none, and metrics.json scores users as `pinsage test` does."""
    args, last = uid_run
    out = tmp_path / "art"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out),
                 "--artifacts.index", "exact"]) == 0
    module = _module(last)
    table = module.user_encoder.user_emb.weight.detach().numpy()
    assert table.shape == (300, 16) and np.count_nonzero(table)
    users = np.load(out / fmt.USERS)
    assert np.array_equal(users[fmt.USER_ID_TABLE], table)
    emb = np.load(out / fmt.EMBEDDINGS)
    ptr, items = users["ptr"], users["items"]
    with torch.no_grad():  # the module's formula over users.npz's histories (what recommend pools)
        pv = module.user_vectors(torch.from_numpy(emb), torch.from_numpy(ptr), torch.from_numpy(items)).numpy()
        module.user_encoder.user_emb.weight.zero_()
        history_only = module.user_vectors(torch.from_numpy(emb), torch.from_numpy(ptr),
                                           torch.from_numpy(items)).numpy()
    from app.recommend import Recommender

    rec = Recommender(str(out))
    raw_users = users["user_ids"].tolist()
    for u in (0, 123, 299):
        seen = items[ptr[u]:ptr[u + 1]]
        capsys.readouterr()
        assert main(["recommend", "--artifacts", str(out), "--user", raw_users[u], "-k", "10", "--json"]) == 0
        got = json.loads(capsys.readouterr().out)["items"]
        ids, scores = _expected(pv[u], emb, seen, 10)
        assert [g["id"] for g in got] == [rec.item_ids[i] for i in ids]
        np.testing.assert_allclose([g["score"] for g in got], scores, rtol=0, atol=TOL)
        np.testing.assert_allclose(rec.user_vector(seen, u), pv[u], rtol=0, atol=TOL)
        ids_wo, without = _expected(history_only[u], emb, seen, 10)
        # e_u moves the answer well beyond the tolerance: dropping it fails the checks above
        assert np.abs(pv[u] - history_only[u]).max() > 100 * TOL and np.abs(scores - without).max() > 10 * TOL
        # serve's POST /recommendations: a history without a user id, so no e_u
        posted = rec.for_history([rec.item_ids[i] for i in seen], 10)["items"]
        assert [g["id"] for g in posted] == [rec.item_ids[i] for i in ids_wo]
        np.testing.assert_allclose([g["score"] for g in posted], without, rtol=0, atol=TOL)
    # predict's metrics.json: the users scored with e_u, as `pinsage test` scores them
    capsys.readouterr()
    assert main(["test", *args, "--ckpt_path", str(last)]) == 0
    tested = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    predicted = json.loads((out / fmt.METRICS).read_text())
    keys = [k for k in predicted if k.startswith("pinsage/full/") and not k.endswith("/seconds")]
    assert keys and all(abs(predicted[k] - tested[k]) < 1e-4 for k in keys), keys


@pytest.mark.slow  # a 1-epoch fit of the tiny graph with user queries: ~25 s
def test_fit_links_num_users_and_trains_the_table(uid_run, tiny_args, tmp_path, capsys):
    _, last = uid_run
    ckpt = torch.load(last, weights_only=True)
    table = ckpt["state_dict"]["user_encoder.user_emb.weight"]
    assert ckpt["hyper_parameters"]["num_users"] == 300 and table.shape == (300, 16)
    assert torch.count_nonzero(table) > 0  # zero at init: the fit moved it
    capsys.readouterr()
    assert main(["fit", *tiny_args(tmp_path / "items"), "--model.user_id_embedding", "true",
                 "--trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "user_id_embedding=True needs data.queries users with full_graph" in err
