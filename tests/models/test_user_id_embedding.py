"""model.user_id_embedding: a learned per-user vector e_u added to the history's user vector,
p_u = normalise(normalise(W_u pooled) + e_u), zero at init (the model without it)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from datamodules.batch import IdBatch
from models.fused import PoolMinusPositive
from models.module import PinSageModule
from models.sparse import SparseAdjacency
from models.user_encoder import UserEncoder

N_ITEMS, N_USERS, D = 40, 12, 8


def _graph(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    deg = torch.randint(1, 6, (N_ITEMS,), generator=g)
    nbr = SparseAdjacency(torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)]),
                          torch.randint(0, N_ITEMS, (int(deg.sum()),), generator=g),
                          torch.rand(int(deg.sum()), generator=g) + 0.1, num_src=N_ITEMS)
    hdeg = torch.randint(2, 8, (N_USERS,), generator=g)
    hist = SparseAdjacency(torch.cat([torch.zeros(1, dtype=torch.long), hdeg.cumsum(0)]),
                           torch.randint(0, N_ITEMS, (int(hdeg.sum()),), generator=g),
                           torch.rand(int(hdeg.sum()), generator=g) + 0.5, num_src=N_ITEMS)
    return {"x": torch.randn(N_ITEMS, 3, generator=g), "new_degree": None, "ids": torch.arange(N_ITEMS),
            "nbr": nbr, "history": hist}


def _module(on: bool, user_encoder: str = "linear", **kw) -> PinSageModule:
    torch.manual_seed(0)
    m = PinSageModule(in_channels=3, num_items=N_ITEMS, hidden_channels=16, out_channels=D, id_embedding="true",
                      skip=True, loss="softmax", user_encoder=user_encoder, num_users=N_USERS,
                      user_id_embedding=on, **kw)
    m._full = dict(_graph(), device=m.device)
    m.log = lambda *a, **k: None
    return m


def _batch(users=None):
    g = torch.Generator().manual_seed(2)
    hist = _graph()["history"]
    users = torch.randint(0, N_USERS, (20,), generator=g) if users is None else users
    pos = hist.col[hist.ptr[users]]  # the first history item of each user
    return IdBatch(query=users, pos=pos, easy_neg=torch.randperm(N_ITEMS, generator=g)[:15],
                   hard_neg=torch.empty(users.numel(), 0, dtype=torch.long),
                   pos_weight=hist.weight[hist.ptr[users]], queries="users")


def _eval_vectors(m: PinSageModule, z: torch.Tensor) -> torch.Tensor:
    h = m._full["history"]
    return m.user_vectors(z, h.ptr, h.col, h.weight)


def _set_free(m: PinSageModule, seed: int = 3) -> torch.Tensor:
    """Random W_u and e_u (so both terms of the formula are exercised); returns the table."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.user_encoder.lin.weight.copy_(torch.eye(D) + 0.3 * torch.randn(D, D, generator=g))
        m.user_encoder.user_emb.weight.copy_(torch.randn(N_USERS, D, generator=g))
    return m.user_encoder.user_emb.weight.detach().clone()


def _by_hand(m: PinSageModule, pooled: torch.Tensor, users: torch.Tensor, table) -> torch.Tensor:
    base = F.normalize(pooled @ m.user_encoder.lin.weight.detach().t(), dim=-1)
    return base if table is None else F.normalize(base + table[users], dim=-1)


def _pooled(z: torch.Tensor) -> torch.Tensor:
    h = _graph()["history"]
    seg = torch.repeat_interleave(torch.arange(N_USERS), h.ptr[1:] - h.ptr[:-1])
    return torch.zeros(N_USERS, D).index_add_(0, seg, z[h.col] * h.weight.unsqueeze(-1))


def test_option_off_is_todays_encoder():
    """Off: no user-id parameters, and user vectors are bit for bit normalise(W_u pooled) through
    the ops the encoder used before the option (the user ids the module now passes along are
    ignored) on the evaluation and leave-one-out training paths, fused and op by op."""
    m = _module(False)
    assert m.user_encoder.user_emb is None and not any("user_emb" in k for k in m.state_dict())
    assert m.user_encoder.num_users == 0
    w_u = torch.eye(D) + 0.3 * torch.randn(D, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        m.user_encoder.lin.weight.copy_(w_u)
    z = F.normalize(torch.randn(N_ITEMS, D, generator=torch.Generator().manual_seed(4)), dim=-1)
    pooled = m._full["history"].matmul(z, normalize=False)  # the ops of the encoder before the option
    assert torch.equal(_eval_vectors(m, z), F.normalize(m.user_encoder.lin(pooled), dim=-1))
    b, h, lin = _batch(), m._full["history"], m.user_encoder.lin
    old = {True: PoolMinusPositive.apply(z, h.ptr, h.col, h.weight, b.query, b.pos, b.pos_weight),
           False: pooled[b.query] - b.pos_weight.unsqueeze(-1) * z[b.pos]}
    for fused in (True, False):
        m.user_encoder.fused = fused
        zq = m.user_encoder.leave_one_out_rows(z, h, b.query, b.pos, b.pos_weight)
        assert torch.equal(zq, F.normalize(lin(old[fused]), dim=-1))


def test_zero_init_gives_the_vectors_without_the_option():
    """On, untrained: the table is zero and every user vector (evaluation and leave-one-out
    training, fused and op by op) is the one without the option, up to float rounding."""
    off, on = _module(False), _module(True)
    assert on.user_encoder.user_emb.weight.shape == (N_USERS, D)
    assert torch.count_nonzero(on.user_encoder.user_emb.weight) == 0
    on.load_state_dict(off.state_dict(), strict=False)
    with torch.no_grad():
        z = off.embed_all()
        torch.testing.assert_close(_eval_vectors(on, z), _eval_vectors(off, z), rtol=0, atol=1e-6)
        for fused in (True, False):
            on.user_encoder.fused = off.user_encoder.fused = fused
            torch.testing.assert_close(on._training_embeddings(_batch())[0], off._training_embeddings(_batch())[0],
                                       rtol=0, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_nonzero_free_vectors_follow_the_formula(fused):
    """With W_u and e_u set, the evaluation rows (users in id order) and the leave-one-out
    training queries equal normalise(normalise(W_u pooled) + e_u) computed by hand."""
    m = _module(True)
    table = _set_free(m)
    m.user_encoder.fused = fused
    with torch.no_grad():
        z = m.embed_all()
        pooled = _pooled(z)
        torch.testing.assert_close(_eval_vectors(m, z), _by_hand(m, pooled, torch.arange(N_USERS), table))
        b = _batch()
        zq = m._training_embeddings(b)[0]
        loo = pooled[b.query] - b.pos_weight.unsqueeze(-1) * z[b.pos]
        torch.testing.assert_close(zq, _by_hand(m, loo, b.query, table))
        # and it is not the vector without e_u (the test can tell the two apart)
        assert not torch.allclose(zq, _by_hand(m, loo, b.query, None), atol=1e-3)


def test_free_vectors_in_the_causal_and_history_dropout_paths():
    """The other whole-catalogue user-query paths add e_u of their users too."""
    m = _module(True)
    table = _set_free(m)
    with torch.no_grad():
        z = m.embed_all()
        b = _batch(torch.tensor([3, 0, 5]))
        hist, w = torch.tensor([[1, 2, -1], [4, 5, 6], [7, -1, -1]]), torch.tensor([[1., .5, 0], [1, 1, 1], [1, 0, 0]])
        causal = IdBatch(b.query, b.pos, b.easy_neg, b.hard_neg, b.pos_weight, hist, w, queries="users")
        zq = m._training_embeddings(causal)[0]
        pooled = (z[hist.clamp(min=0)] * w.unsqueeze(-1)).sum(1)
        torch.testing.assert_close(zq, _by_hand(m, pooled, b.query, table))
        m.hparams.history_dropout = 0.5
        zu, pos, _, row, users, _ = m._held_out_queries(torch.tensor([3, 0, 5, 0]), z)
        h = m._full["history"]
        for k, u in enumerate(users.tolist()):
            held = set(pos[row == k].tolist())
            lo, hi = int(h.ptr[u]), int(h.ptr[u + 1])
            keep = [e for e in range(lo, hi) if int(h.col[e]) not in held]
            kept = (z[h.col[keep]] * h.weight[keep].unsqueeze(-1)).sum(0, keepdim=True)
            torch.testing.assert_close(zu[k:k + 1], _by_hand(m, kept, torch.tensor([u]), table))


def test_gradient_reaches_only_the_batch_users_rows():
    m = _module(True)
    users = torch.tensor([1, 4, 4, 9])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        m.training_step(_batch(users), 0).backward()
    g = m.user_encoder.user_emb.weight.grad
    in_batch = torch.zeros(N_USERS, dtype=torch.bool)
    in_batch[users] = True
    assert g[in_batch].abs().sum(1).min() > 0
    assert torch.count_nonzero(g[~in_batch]) == 0


def test_refusals_name_the_setting():
    with pytest.raises(ValueError, match=r"user_id_embedding=True needs num_users >= 1 \(got num_users=0\)"):
        PinSageModule(in_channels=3, num_items=N_ITEMS, user_id_embedding=True)
    with pytest.raises(ValueError, match=r"user_id_embedding='yes' is not valid; choose true or false"):
        PinSageModule(in_channels=3, num_items=N_ITEMS, num_users=N_USERS, user_id_embedding="yes")
    m = _module(True)
    b = _batch()
    items = IdBatch(b.query, b.pos, b.easy_neg, b.hard_neg, b.pos_weight, queries="items")
    with pytest.raises(ValueError, match=r"user_id_embedding=True needs data.queries users with full_graph"):
        m._training_embeddings(items)
    with pytest.raises(ValueError, match=r"user_id_embedding=True needs data.queries users with full_graph"):
        m._training_embeddings(type("Sampled", (), {"blocks": [], "queries": "items"})())
    h = m._full["history"]
    with pytest.raises(ValueError, match=r"history has 11 user rows: .* the num_users=12 users in id order"):
        m.user_vectors(torch.randn(N_ITEMS, D), h.ptr[:-1], h.col[:int(h.ptr[-2])])
    enc = UserEncoder(4, num_users=3)
    with pytest.raises(ValueError, match=r"users holds ids in \[0, 3\]: expected \[0, 3\)"):
        enc(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"has a user-id table \(num_users=3\): pass the rows' users"):
        enc(torch.randn(2, 4))
