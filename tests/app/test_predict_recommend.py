"""`pinsage predict` artifacts and `pinsage recommend` answers."""

import json

import numpy as np
import pytest

from app.cli import main
from app.recommend_command import main as recommend


@pytest.fixture(scope="module")
def artifacts(tiny_run, tmp_path_factory):
    run, last, args = tiny_run
    out = tmp_path_factory.mktemp("art") / "synthetic"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out),
                 "--artifacts.index", "hnsw"]) == 0
    return out


def test_predict_writes_complete_artifacts(artifacts):
    files = {p.name for p in artifacts.iterdir()}
    assert {"embeddings.npy", "items.csv", "users.npz", "index.faiss", "manifest.json", "metrics.json"} <= files
    emb = np.load(artifacts / "embeddings.npy")
    man = json.loads((artifacts / "manifest.json").read_text())
    assert emb.dtype == np.float32 and emb.shape == (man["count"], man["dims"]) == (400, 16)
    assert man["index"] == "hnsw" and man["checkpoint"].endswith("last.ckpt") and man["config"]["data"]["dataset"] == "synthetic"
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    metrics = json.loads((artifacts / "metrics.json").read_text())
    assert any(k.startswith("pinsage/item/") for k in metrics) and any(k.startswith("popularity/") for k in metrics)
    assert not [p for p in artifacts.parent.iterdir() if p.name.startswith(".")]  # no temp left behind


def test_predict_without_checkpoint_is_one_clear_error(tiny_run, tmp_path, capsys):
    _, _, args = tiny_run
    assert main(["predict", *args, "--artifacts.output_dir", str(tmp_path / "x")]) == 2
    assert "pinsage predict: error: predict needs --ckpt_path" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_recommend_item_and_user(artifacts, capsys):
    assert recommend(["--artifacts", str(artifacts), "--item", "3", "-k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["query"]["item"] == "3" and len(out["items"]) == 5
    assert "3" not in [it["id"] for it in out["items"]]
    scores = [it["score"] for it in out["items"]]
    assert scores == sorted(scores, reverse=True) and out["items"][0]["title"].startswith("item ")
    users = np.load(artifacts / "users.npz")
    seen = set(users["items"][users["ptr"][0]:users["ptr"][1]].tolist())
    assert recommend(["--artifacts", str(artifacts), "--user", str(users["user_ids"][0]), "-k", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["items"]) == 10 and not seen & {int(it["id"]) for it in out["items"]}


@pytest.mark.parametrize("argv,match", [
    (["--item", "nope"], "--item 'nope' is not in the catalogue"),
    (["--user", "nope"], "--user 'nope' is unknown"),
    (["--item", "3", "-k", "0"], "-k 0 is not valid"),
    (["--item", "3", "-k", "400"], "-k 400 is not valid"),
])
def test_recommend_bad_input(artifacts, capsys, argv, match):
    assert recommend(["--artifacts", str(artifacts), *argv]) == 2
    assert match in capsys.readouterr().err


def test_truncated_embeddings_and_foreign_index(artifacts, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(artifacts, bad)
    np.save(bad / "embeddings.npy", np.load(bad / "embeddings.npy")[:10])
    assert recommend(["--artifacts", str(bad), "--item", "3"]) == 2
    assert "truncated" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(artifacts, other)
    emb = np.load(other / "embeddings.npy")
    np.save(other / "embeddings.npy", np.concatenate([emb, emb], 1))
    man = json.loads((other / "manifest.json").read_text())
    man["dims"] = 32
    man.pop("checksums")  # as an older manifest: the index's own dimension check answers
    (other / "manifest.json").write_text(json.dumps(man))
    assert recommend(["--artifacts", str(other), "--item", "3"]) == 2
    assert "dimension" in capsys.readouterr().err


def test_predict_scores_the_listed_baselines(tiny_run, tmp_path, capsys):
    run, last, args = tiny_run
    out = tmp_path / "art"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(out),
                 "--artifacts.baselines", "[popularity, itemknn, pixie]"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for b in ("popularity", "itemknn", "pixie"):
        assert f"{b}/full/recall@20" in metrics and f"{b}/item/mrr" in metrics
    assert not any(k.startswith("cooccurrence/") for k in metrics)
    bad = tmp_path / "bad"
    assert main(["predict", *args, "--ckpt_path", str(last), "--artifacts.output_dir", str(bad),
                 "--artifacts.baselines", "[itemknm]"]) == 2
    err = capsys.readouterr().err
    assert "pinsage predict: error: --artifacts.baselines has ['itemknm']" in err and "rp3beta" in err
    assert not bad.exists()


def _copy(artifacts, tmp_path, name="bad"):
    import shutil

    bad = tmp_path / name
    shutil.copytree(artifacts, bad)
    return bad


def test_truncated_users_npz_fails_only_user_queries_with_the_file_named(artifacts, tmp_path, capsys):
    import shutil

    bad = _copy(artifacts, tmp_path)
    data = (bad / "users.npz").read_bytes()
    (bad / "users.npz").write_bytes(data[: len(data) // 2])
    man = json.loads((bad / "manifest.json").read_text())
    del man["checksums"]  # an older manifest without checksums: the reader itself must cope
    (bad / "manifest.json").write_text(json.dumps(man))
    assert recommend(["--artifacts", str(bad), "--item", "3", "--json"]) == 0
    capsys.readouterr()
    assert recommend(["--artifacts", str(bad), "--user", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad / "users.npz") in err and "truncated or corrupt" in err
    # with the manifest's checksums the truncation is caught up front, naming the file and sizes
    shutil.copy(artifacts / "manifest.json", bad / "manifest.json")
    assert recommend(["--artifacts", str(bad), "--item", "3"]) == 2
    assert f"{bad / 'users.npz'} has {len(data) // 2} bytes, manifest.json says {len(data)}" in capsys.readouterr().err


@pytest.mark.parametrize("text,match", [
    ("{not json", "is not valid JSON"),
    ('{"dims": 16}', "has no integer 'count'"),
    ("[]", "has no integer 'count' / 'dims'"),
])
def test_bad_manifest_is_one_error_naming_the_file(artifacts, tmp_path, capsys, text, match):
    bad = _copy(artifacts, tmp_path)
    (bad / "manifest.json").write_text(text)
    assert recommend(["--artifacts", str(bad), "--item", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pinsage recommend: error: ") and str(bad / "manifest.json") in err and match in err


def test_index_with_flipped_payload_bytes_is_refused(artifacts, tmp_path, capsys):
    bad = _copy(artifacts, tmp_path)
    data = bytearray((bad / "index.faiss").read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 64):  # inside the stored vectors: still loads in faiss
        data[k] ^= 0xFF
    (bad / "index.faiss").write_bytes(bytes(data))
    assert recommend(["--artifacts", str(bad), "--item", "3"]) == 2
    assert "index.faiss fails its SHA-256 check" in capsys.readouterr().err
