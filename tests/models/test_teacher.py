"""The EASE teacher of the set objective (models/teacher.py, model.teacher_loss)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.module import PinSageModule
from models.sparse import SparseAdjacency
from models.teacher import ease_teacher, kept_scores, teacher_cross_entropy

HIST = {0: [1, 2, 3, 4, 5, 6], 1: [7], 2: [0, 9], 3: list(range(10)), 4: [2, 3, 8]}


def _history():
    ptr = torch.tensor([0] + np.cumsum([len(HIST[u]) for u in range(5)]).tolist())
    col = torch.tensor([i for u in range(5) for i in HIST[u]])
    return ptr, col


def test_ease_teacher_is_the_closed_form():
    ptr, col = _history()
    X = np.zeros((5, 10))
    for u, items in HIST.items():
        X[u, items] = 1
    P = np.linalg.inv(X.T @ X + 2.0 * np.eye(10))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0)
    assert np.allclose(ease_teacher(ptr, col, 10, lam=2.0).numpy(), B, atol=1e-5)


def test_kept_scores_sum_each_rows_items():
    W = torch.randn(6, 6)
    row, item = torch.tensor([0, 0, 2, 1, 2, 2]), torch.tensor([1, 4, 0, 5, 3, 0])
    got = kept_scores(W, row, item, 3)
    want = torch.stack([W[[1, 4]].sum(0), W[5], W[[0, 3, 0]].sum(0)])  # a repeated item counts twice
    assert torch.allclose(got, want, atol=1e-6)


def test_teacher_cross_entropy_by_hand():
    torch.manual_seed(0)
    logits, teacher = torch.randn(2, 5), torch.tensor([[0.1, 0.9, 0.5, 0.8, -1.0], [3.0, 2.0, 1.0, 0.0, -1.0]])
    mask = torch.tensor([[False, True, False, False, False], [False, False, True, True, True]])
    got = teacher_cross_entropy(logits, teacher, top=2, mask=mask)
    lp0 = F.log_softmax(logits[0, [0, 2, 3, 4]], 0)  # item 1 masked: top-2 of the rest = items 3, 2
    lp1 = F.log_softmax(logits[1, [0, 1]], 0)  # items 2-4 masked: top-2 = items 0, 1
    want = (-(lp0[2] + lp0[1]) / 2 - (lp1[0] + lp1[1]) / 2) / 2
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    # a row with fewer entries left than top uses those it has
    one = teacher_cross_entropy(logits[1:], teacher[1:], top=4, mask=mask[1:])
    assert one.item() == pytest.approx((-(lp1[0] + lp1[1]) / 2).item(), abs=1e-6)


def test_teacher_loss_of_the_module_and_its_gradient():
    """The module's teacher term: EASE of the training history scores each user's kept items."""
    ptr, col = _history()
    m = PinSageModule(in_channels=4, num_items=10, out_channels=4, history_dropout=0.5, loss="softmax",
                      mask_own_negatives=True, teacher_loss=0.5, teacher_top=2, teacher_lam=2.0, temperature=0.5)
    m._full = {"history": SparseAdjacency(ptr, col, num_src=10), "device": m.device}
    torch.manual_seed(0)
    z = F.normalize(torch.randn(10, 4), dim=-1).requires_grad_()
    zu, _, _, _, users, (krow, kitem) = m._held_out_queries(torch.tensor([0, 2, 4]), z)
    negs = torch.tensor([0, 3, 5, 7, 8, 9])
    mask = m._own_items(users, negs)
    got = m._teacher_loss(zu, z[negs], negs, (krow, kitem), users, mask)
    W = ease_teacher(ptr, col, 10, lam=2.0)
    t = torch.stack([W[kitem[krow == r]].sum(0) for r in range(users.numel())])[:, negs]
    want = teacher_cross_entropy(zu @ z[negs].T / 0.5, t, 2, mask)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    got.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # without mask_own_negatives the teacher still leaves the users' own items out
    m.hparams.mask_own_negatives = False
    unmasked = m._teacher_loss(zu, z[negs], negs, (krow, kitem), users, None)
    assert unmasked.item() == pytest.approx(want.item(), abs=1e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(teacher_loss=1.0, history_dropout=0.5, loss="softmax"), r"teacher_loss=1\.0 is not valid.*\[0, 1\)"),
    (dict(teacher_loss=0.5, loss="softmax"), r"teacher_loss=0\.5 needs history_dropout > 0"),
    (dict(teacher_loss=0.5, history_dropout=0.5, loss="max_margin"), r"needs history_dropout > 0 and loss='softmax'"),
    (dict(teacher_top=0), r"teacher_top=0 must be >= 1"),
    (dict(teacher_lam=0.0), r"teacher_lam=0\.0 > 0"),
    (dict(teacher_loss=0.5, history_dropout=0.5, loss="softmax", num_items=60_000),
     r"catalogue has 60000 items, more than its limit of 50000; set model.teacher_loss 0"),
])
def test_teacher_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        PinSageModule(**{"in_channels": 4, "num_items": 10, **kw})
