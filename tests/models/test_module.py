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


def test_history_dropout_must_be_a_share():
    with pytest.raises(ValueError, match=r"history_dropout=1\.0 is not valid.*\[0, 1\)"):
        PinSageModule(in_channels=4, num_items=10, history_dropout=1.0)
    with pytest.raises(ValueError, match=r"history_dropout_weight='items' is not valid; choose user or interaction"):
        PinSageModule(in_channels=4, num_items=10, history_dropout_weight="items")
    with pytest.raises(ValueError, match=r"mask_own_negatives=True needs loss='softmax' \(got loss='max_margin'\)"):
        PinSageModule(in_channels=4, num_items=10, loss="max_margin", mask_own_negatives=True)


@pytest.mark.parametrize("p,weighting", [(0.02, "user"), (0.5, "user"), (0.98, "user"), (0.5, "interaction")])
def test_held_out_queries_split_each_history_into_query_and_positives(p, weighting):
    """history_dropout: per user, kept items (pooled into the query) and held-out positives
    partition the training history; >= 1 of each; the positives of a user weigh 1 in all."""
    import torch
    import torch.nn.functional as F

    from models.sparse import SparseAdjacency

    torch.manual_seed(0)
    hist = {0: [1, 2, 3, 4, 5, 6], 1: [7], 2: [0, 9], 3: list(range(10))}
    ptr = torch.tensor([0] + list(torch.tensor([len(hist[u]) for u in range(4)]).cumsum(0)))
    col = torch.tensor([i for u in range(4) for i in hist[u]])
    m = PinSageModule(in_channels=4, num_items=10, out_channels=4, history_dropout=p,
                      history_dropout_weight=weighting)
    m._full = {"history": SparseAdjacency(ptr, col, num_src=10), "device": m.device}
    z = F.normalize(torch.randn(10, 4), dim=-1)
    batch_users = torch.tensor([3, 0, 1, 2, 0])  # user 0 twice: it weighs 2 / its degree
    for _ in range(20):
        zu, pos, w, row, users, _ = m._held_out_queries(batch_users, z)
        assert sorted(users.tolist()) == [0, 2, 3]  # user 1 has one item: no query without it
        for k, u in enumerate(users.tolist()):
            rows = (row == k).nonzero().flatten()
            held = set(pos[rows].tolist())
            kept = set(hist[u]) - held
            assert held and kept and held <= set(hist[u]) and len(held) == rows.numel()
            per_user = 1 / len(hist[u]) if weighting == "user" else 1.0  # interaction: a user weighs its degree
            assert w[rows].sum().item() == pytest.approx(int((batch_users == u).sum()) * per_user)
            expect = F.normalize(z[sorted(kept)].sum(0), dim=-1)  # identity user layer at start
            assert torch.allclose(zu[k], expect, atol=1e-6)


def test_own_items_mask_and_masked_negatives():
    """mask_own_negatives: a user's own training items are left out of its negatives' sum."""
    import torch

    from models.loss import SampledSoftmaxLoss
    from models.sparse import SparseAdjacency

    hist = {0: [1, 2, 3], 1: [4], 2: [0, 9]}
    ptr = torch.tensor([0, 3, 4, 6])
    col = torch.tensor([1, 2, 3, 4, 0, 9])
    m = PinSageModule(in_channels=4, num_items=10, out_channels=4, history_dropout=0.5, mask_own_negatives=True,
                      loss="softmax")
    m._full = {"history": SparseAdjacency(ptr, col, num_src=10), "device": m.device}
    negs = torch.tensor([9, 2, 5, 4])
    mask = m._own_items(torch.tensor([0, 2, 1]), negs)
    assert mask.tolist() == [[False, True, False, False], [True, False, False, False], [False, False, False, True]]
    torch.manual_seed(0)
    q, p, n = torch.randn(3, 4), torch.randn(3, 4), torch.randn(4, 4)
    fn, row = SampledSoftmaxLoss(0.5), torch.tensor([0, 1, 2])
    masked = fn.grouped(q, row, p, n, neg_mask=mask)[0]
    by_hand = torch.stack([fn(q[[r]], p[[r]], n[~mask[r]])[0] for r in range(3)]).mean()
    assert torch.allclose(masked, by_hand, atol=1e-6)


@pytest.mark.parametrize("mask_own", [True, False])
def test_own_items_masked_with_one_query_per_pair(mask_own):
    """mask_own_negatives with one query per pair (leave one out / ``before``): each pair's
    negatives leave out its user's own training items; off, every negative counts."""
    from types import SimpleNamespace

    import torch

    from models.loss import SampledSoftmaxLoss
    from models.sparse import SparseAdjacency

    ptr, col = torch.tensor([0, 3, 4, 6]), torch.tensor([1, 2, 3, 4, 0, 9])
    m = PinSageModule(in_channels=4, num_items=10, out_channels=4, loss="softmax", temperature=0.5,
                      mask_own_negatives=mask_own)
    m._full = {"history": SparseAdjacency(ptr, col, num_src=10), "device": m.device}
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 4), torch.randn(4, 4), torch.randn(4, 4)
    users, negs = torch.tensor([0, 2, 1, 0]), torch.tensor([9, 2, 5, 4])
    m._training_embeddings = lambda batch: (q, p, n, None, None)
    m.log = lambda *a, **k: None
    batch = SimpleNamespace(queries="users", query=users, pos=torch.tensor([3, 0, 4, 1]), easy_neg=negs,
                            hard_neg=torch.empty(0, dtype=torch.long))
    loss = m.training_step(batch, 0)
    own = {0: {1, 2, 3}, 1: {4}, 2: {0, 9}}
    fn = SampledSoftmaxLoss(0.5)
    keep = [[not (mask_own and int(i) in own[int(u)]) for i in negs] for u in users]
    by_hand = torch.stack([fn(q[[r]], p[[r]], n[torch.tensor(keep[r])])[0] for r in range(4)]).mean()
    assert torch.allclose(loss, by_hand, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_fused_adam_gives_the_single_tensor_update(optimizer):
    """configure_optimizers uses the fused Adam / AdamW kernel on CPU; three steps of it move the
    parameters as the single-tensor implementation does."""
    import torch

    torch.manual_seed(0)
    m = PinSageModule(in_channels=4, num_items=10, hidden_channels=8, out_channels=4, optimizer=optimizer,
                      weight_decay=0.01)
    opt = m.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True
    params = list(m.parameters())
    ref = [p.detach().clone().requires_grad_() for p in params]
    start = [p.detach().clone() for p in params]
    ref_opt = type(opt)(ref, lr=opt.defaults["lr"], weight_decay=0.01, foreach=False)
    for step in range(3):
        for p, r in zip(params, ref):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            r.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    for p, r, s in zip(params, ref, start):
        assert not torch.equal(p.detach(), s)  # the step moved it
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("user_encoder, mask_own", [("mean", False), ("linear", False), ("mean", True)])
def test_whole_catalogue_step_fused_equals_op_by_op(user_encoder, mask_own):
    """A whole-catalogue user-query step (Gowalla's setting: leave-one-out users, sampled
    softmax over shared negatives, with or without each user's own items masked out of them)
    gives the same loss and parameter gradients with the fused CPU nodes (layers, user pooling,
    softmax) as op by op."""
    import warnings

    import torch

    from datamodules.batch import IdBatch
    from models.sparse import SparseAdjacency

    torch.manual_seed(0)
    n_items, n_users = 40, 12
    g = torch.Generator().manual_seed(1)
    deg = torch.randint(1, 6, (n_items,), generator=g)
    nbr = SparseAdjacency(torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)]),
                          torch.randint(0, n_items, (int(deg.sum()),), generator=g),
                          torch.rand(int(deg.sum()), generator=g) + 0.1, num_src=n_items)
    # >= 2 items a user: a history of the positive alone is the zero query, where F.normalize's
    # gradient is scaled by 1 / eps on both paths and cancels to float32 noise
    hdeg = torch.randint(2, 8, (n_users,), generator=g)
    hist = SparseAdjacency(torch.cat([torch.zeros(1, dtype=torch.long), hdeg.cumsum(0)]),
                           torch.randint(0, n_items, (int(hdeg.sum()),), generator=g), num_src=n_items)
    m = PinSageModule(in_channels=3, num_items=n_items, hidden_channels=16, out_channels=8, id_embedding="true",
                      skip=True, loss="softmax", temperature=0.1, user_encoder=user_encoder,
                      mask_own_negatives=mask_own)
    m._full = {"x": torch.randn(n_items, 3, generator=g), "new_degree": None, "ids": torch.arange(n_items),
               "nbr": nbr, "history": hist, "device": m.device}
    users = torch.randint(0, n_users, (20,), generator=g)
    pos = hist.col[hist.ptr[users]]  # the first history item of each user
    batch = IdBatch(query=users, pos=pos, easy_neg=torch.randperm(n_items, generator=g)[:15],
                    hard_neg=torch.empty(20, 0, dtype=torch.long), pos_weight=torch.ones(20), queries="users")

    def run(fused):
        m.model.fused_nodes = m.loss_fn.fused = m.user_encoder.fused = fused
        m.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log without a Trainer
            loss = m.training_step(batch, 0)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    (a, ga), (b, gb) = run(True), run(False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys() and len(ga) >= 5
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_whole_catalogue_positives_and_negatives_in_one_gather():
    """An id batch's positives and shared negatives are one index_select of z (one [I, d] gradient
    buffer in backward, not one per use and their sum): the rows and z's gradient as two gathers'."""
    import torch

    from datamodules.batch import IdBatch

    m = PinSageModule(in_channels=3, num_items=30, hidden_channels=16, out_channels=8, id_embedding="true",
                      loss="softmax")
    z = torch.randn(30, 8, requires_grad=True)
    m.embed_all = lambda: z
    pos, easy = torch.tensor([3, 5, 5, 29]), torch.tensor([5, 0, 7])  # item 5 both a positive and a negative
    batch = IdBatch(query=torch.tensor([1, 2, 3, 4]), pos=pos, easy_neg=easy, hard_neg=torch.empty(4, 0, dtype=torch.long),
                    pos_weight=torch.ones(4), queries="items")
    zq, zp, z_easy, z_hard, _ = m._training_embeddings(batch)
    assert z_hard is None and zp.grad_fn.next_functions[0][0].name() == "IndexSelectBackward0"
    assert torch.equal(zp, z[pos]) and torch.equal(z_easy, z[easy]) and zp.is_contiguous() and z_easy.is_contiguous()
    w1, w2 = torch.randn(4, 8), torch.randn(3, 8)
    (g,) = torch.autograd.grad((zp * w1).sum() + (z_easy * w2).sum(), z)
    (ref,) = torch.autograd.grad((z[pos] * w1).sum() + (z[easy] * w2).sum(), z)
    torch.testing.assert_close(g, ref)
