"""model.user_id_embedding through the CLI: num_users is linked from the data, item-query
training refuses it, and predict refuses its checkpoints (no per-user vectors in artifacts)."""

import pytest
import torch

from app.cli import main


def test_predict_refuses_a_user_id_checkpoint(tiny_run, tmp_path, capsys):
    _, last, args = tiny_run
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["user_id_embedding"] = True
    fake = tmp_path / "user-id.ckpt"
    torch.save(ckpt, fake)
    out = tmp_path / "art"
    capsys.readouterr()
    assert main(["predict", *args, "--ckpt_path", str(fake), "--artifacts.output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pinsage predict: error: --ckpt_path '{fake}' was trained with "
                                               "model.user_id_embedding=true")
    assert "the artifacts do not carry per-user vectors yet" in err[0] and not out.exists()


def test_write_artifacts_refuses_a_module_with_a_user_id_table(tmp_path):
    from app.artifacts import write_artifacts
    from models.module import PinSageModule

    m = PinSageModule(in_channels=3, num_items=5, num_users=4, user_id_embedding=True)
    with pytest.raises(ValueError, match=r"the artifacts do not carry per-user vectors yet"):
        write_artifacts(m, None, str(tmp_path / "art"))
    assert not (tmp_path / "art").exists()


@pytest.mark.slow  # a 1-epoch fit of the tiny graph with user queries: ~25 s
def test_fit_links_num_users_and_trains_the_table(tiny_args, tmp_path, capsys):
    root = tmp_path / "run"
    assert main(["fit", *tiny_args(root), "--data.queries", "users", "--model.loss", "softmax",
                 "--model.user_id_embedding", "true", "--model.val_protocols", "[item,full]",
                 "--trainer.max_epochs=1"]) == 0
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    table = ckpt["state_dict"]["user_encoder.user_emb.weight"]
    assert ckpt["hyper_parameters"]["num_users"] == 300 and table.shape == (300, 16)
    assert torch.count_nonzero(table) > 0  # zero at init: the fit moved it
    capsys.readouterr()
    assert main(["fit", *tiny_args(tmp_path / "items"), "--model.user_id_embedding", "true",
                 "--trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "user_id_embedding=True needs data.queries users with full_graph" in err
