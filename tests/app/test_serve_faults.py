"""`pinsage serve` under faults (issue 20): a full disk, a modified log line, hostile bodies and ids."""

import errno
import json
import os

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (dev extra)")

import app.serve as serve  # noqa: E402
from app.inductive import NewItem  # noqa: E402
from app.recommend import ArtifactError  # noqa: E402
from app.serve import ServiceState, create_app  # noqa: E402

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _width(artifacts):
    return json.loads((artifacts / "features.json").read_text())["width"]


def _client(artifacts, log, **kw):
    """An in-process client (the real ASGI stack, no sockets)."""
    from fastapi.testclient import TestClient

    return TestClient(create_app(artifacts, token=TOKEN, log_path=log, **kw), raise_server_exceptions=False)


def _full_disk(monkeypatch, room: int):
    """``os.write`` in app.serve behaves like a disk with ``room`` bytes free: a short write, then ENOSPC."""
    left = {"n": room}
    real = os.write

    def write(fd, data):
        if left["n"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[:left["n"]]))
        left["n"] -= n
        return n

    monkeypatch.setattr(serve.os, "write", write)
    return left


def test_full_disk_never_acknowledges_a_torn_item(artifacts, tmp_path, monkeypatch):
    F = _width(artifacts)
    log = tmp_path / "items.jsonl"
    s = ServiceState(artifacts, log)
    s.insert(NewItem(id="F-0", features=[0.1] * F))
    before = log.read_bytes()
    _full_disk(monkeypatch, room=100)  # less than one record
    with pytest.raises(OSError, match="nothing was stored"):
        s.insert(NewItem(id="F-1", features=[0.2] * F))
    assert log.read_bytes() == before  # rolled back: no torn line
    assert "F-1" not in s.rec.item_index
    monkeypatch.undo()
    s.insert(NewItem(id="F-2", features=[0.3] * F))  # space again: appends after the last good line
    s2 = ServiceState(artifacts, log)
    assert s2.replayed["stored"] == 2 and {"F-0", "F-2"} <= set(s2.rec.item_index)


def test_full_disk_answers_507_over_http(artifacts, tmp_path, monkeypatch):
    F = _width(artifacts)
    log = tmp_path / "items.jsonl"
    with _client(artifacts, log) as c:
        assert c.post("/items", json={"id": "F-0", "features": [0.1] * F}, headers=AUTH).status_code == 201
        _full_disk(monkeypatch, room=50)
        r = c.post("/items", json={"id": "F-1", "features": [0.2] * F}, headers=AUTH)
        assert r.status_code == 507 and "nothing was stored" in r.json()["error"]
        assert c.get("/items/F-1/similar").status_code == 404
        monkeypatch.undo()
        assert c.post("/items", json={"id": "F-1", "features": [0.2] * F}, headers=AUTH).status_code == 201
    s = ServiceState(artifacts, log)
    assert s.replayed["stored"] == 2 and log.read_bytes().count(b"\n") == 2


def test_modified_log_line_is_refused(artifacts, tmp_path):
    F = _width(artifacts)
    log = tmp_path / "items.jsonl"
    s = ServiceState(artifacts, log)
    s.insert(NewItem(id="m-0", features=[0.1] * F))
    s.insert(NewItem(id="m-1", features=[0.2] * F))
    lines = log.read_bytes().split(b"\n")
    rec = json.loads(lines[0])
    z = json.dumps(rec["z"][0]).encode()
    changed = str(round(rec["z"][0] + 0.125, 6)).encode()
    assert z in lines[0]
    lines[0] = lines[0].replace(b'"z":[' + z, b'"z":[' + changed, 1)
    log.write_bytes(b"\n".join(lines))
    with pytest.raises(ArtifactError, match="line 1 does not match its checksum"):
        ServiceState(artifacts, log)


def test_unreadable_log_is_one_clear_error(artifacts, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    log = tmp_path / "items.jsonl"
    log.write_text("")
    log.chmod(0)
    with pytest.raises(ArtifactError, match="cannot be read"):
        ServiceState(artifacts, log)


def test_huge_features_are_refused_before_logging(artifacts, tmp_path):
    F = _width(artifacts)
    log = tmp_path / "items.jsonl"
    with _client(artifacts, log) as c:
        r = c.post("/items", json={"id": "big", "features": [1e308] * F}, headers=AUTH)
        assert r.status_code == 422 and "not finite" in r.json()["error"]
        assert c.get("/items/big/similar").status_code == 404
    assert not log.exists() or log.read_bytes() == b""


def test_ids_and_histories_are_strict(artifacts, tmp_path):
    F = _width(artifacts)
    with _client(artifacts, tmp_path / "items.jsonl") as c:
        r = c.post("/items", json={"id": "a/b", "features": [0.1] * F}, headers=AUTH)
        assert r.status_code == 422 and "'/'" in r.json()["error"]
        for bad in (True, 1.0):
            r = c.post("/recommendations", json={"history": [bad]})
            assert r.status_code == 422, (bad, r.text)
        assert c.post("/items", json={"id": True, "features": [0.1] * F}, headers=AUTH).status_code == 422


def test_body_and_history_limits(artifacts, tmp_path):
    with _client(artifacts, tmp_path / "items.jsonl", max_body_bytes=2000, max_history=5) as c:
        big = json.dumps({"history": ["1"] * 1000}).encode()
        r = c.post("/recommendations", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "at most 2000 bytes" in r.json()["error"]

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 500
            yield b"{}"

        r = c.post("/recommendations", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post("/recommendations", json={"history": ["1"] * 6})
        assert r.status_code == 422 and "history" in r.json()["error"]


def _readme_curls():
    """The README's curl commands (continuation lines joined)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    cmds, cur = [], ""
    for line in text.splitlines():
        if cur or line.startswith("curl "):
            cur += line.rstrip("\\").split("   #")[0] + " "
            if not line.endswith("\\"):
                cmds.append(cur.strip())
                cur = ""
    return cmds


def test_readme_curl_examples_work_as_written(artifacts, tmp_path):
    """issue 20 item 15: the README's POST examples answered 422 (no Content-Type)."""
    import shutil
    import subprocess

    from tests.app.servers import InProcessServer

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    cmds = _readme_curls()
    assert len(cmds) >= 4 and any("POST localhost:8000/items" in c for c in cmds)
    server = InProcessServer(create_app(artifacts, token=TOKEN, log_path=tmp_path / "log.jsonl"))
    try:
        env = {**os.environ, "PINSAGE_SERVE_TOKEN": TOKEN}
        for cmd in cmds:
            cmd = cmd.replace("localhost:8000", f"127.0.0.1:{server.port}")
            p = subprocess.run(["bash", "-c", cmd + " -s -o /dev/stderr -w '%{http_code}'"], env=env,
                               capture_output=True, text=True, timeout=60)
            status = int(p.stdout.strip()[-3:])
            if status == 422 and "/items" in cmd:  # README's example is MovieLens content; this model
                assert "give a 'features' row" in p.stderr  # needs features: the body itself was read
                continue
            assert status in (200, 201), (cmd, status, p.stderr)
    finally:
        server.stop()


def test_body_without_json_content_type_names_the_header(artifacts, tmp_path):
    with _client(artifacts, tmp_path / "items.jsonl") as c:
        r = c.post("/recommendations", content=b'{"history": ["1"]}',
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"]


def test_recommend_answers_items_added_with_embed_new(artifacts, tmp_path, capsys):
    """issue 20 item 18: items added with `embed-new` were invisible to `pinsage recommend`."""
    from app.recommend_command import main as recommend_main
    from app.serve import embed_new_main

    F = _width(artifacts)
    new = tmp_path / "new.csv"
    new.write_text("id,features\n" + f"late-1,{'|'.join(['0.3'] * F)}\n")
    log = tmp_path / "items.jsonl"
    assert embed_new_main(["--artifacts", str(artifacts), "--items", str(new), "--log", str(log)]) == 0
    capsys.readouterr()
    assert recommend_main(["--artifacts", str(artifacts), "--log", str(log), "--item", "late-1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"]["item"] == "late-1" and len(out["items"]) == 10
    assert recommend_main(["--artifacts", str(artifacts), "--log", str(tmp_path / "none.jsonl"), "--item", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
