import pytest

from models.module import PinSageModule, WarmupExponential


def test_warmup_then_exponential_decay():
    f = WarmupExponential(warmup_steps=4, steps_per_epoch=4, decay=0.5)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 0.5 and f(7) == 0.5 and f(8) == 0.25  # epoch 1 -> decay^1, epoch 2 -> decay^2
    g = WarmupExponential(warmup_steps=0, steps_per_epoch=10, decay=0.9)
    assert g(0) == 1.0 and abs(g(25) - 0.81) < 1e-12


def test_peak_lr_follows_linear_scaling_without_trainer():
    m = PinSageModule(in_channels=4, num_items=10, hidden_channels=8, out_channels=4, lr=0.01,
                      reference_batch_size=512)
    assert m.peak_lr() == pytest.approx(0.01)  # no trainer: global batch = reference


@pytest.mark.parametrize("kw,match", [
    (dict(optimizer="rmsprop"), "optimizer='rmsprop'"),
    (dict(lr=0), "lr=0"),
    (dict(num_layers=0), "num_layers"),
    (dict(hidden_channels=0), "hidden_channels"),
    (dict(conv="sage-nope"), "conv='sage-nope'"),
    (dict(in_channels=0, id_embedding="false"), "id_embedding"),
])
def test_bad_model_arguments(kw, match):
    args = dict(in_channels=4, num_items=10, hidden_channels=8, out_channels=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        PinSageModule(**args)


def test_checkpoint_of_another_shape_is_rejected_clearly():
    a = PinSageModule(in_channels=4, num_items=10, hidden_channels=8, out_channels=4)
    b = PinSageModule(in_channels=4, num_items=10, hidden_channels=16, out_channels=4)
    ckpt = {"hyper_parameters": dict(a.hparams), "state_dict": a.state_dict()}
    with pytest.raises(ValueError, match="hidden_channels: checkpoint 8 vs config 16"):
        b.on_load_checkpoint(ckpt)
    a.on_load_checkpoint(ckpt)  # same shape: fine


def test_cold_dropout_must_be_a_share():
    import pytest

    from models.module import PinSageModule

    with pytest.raises(ValueError, match=r"cold_dropout=1\.0 is not valid.*\[0, 1\)"):
        PinSageModule(in_channels=4, num_items=10, cold_dropout=1.0)
