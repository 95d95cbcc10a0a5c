"""A measured proposal for ``models/loss.py`` (not used by the app): the max-margin loss over shared
easy negatives + per-pair hard negatives as one autograd node.

    python benchmarks/loss_fusion.py

``models.loss.max_margin_loss`` runs ~20 ops forward and backward on the ``[B, N + H]`` score
matrix (cat, sub, add, clamp, mean, and their backward nodes: where, neg, div, expand copies),
and the rows are taken with ``z[idx]``, whose backward is an accumulating ``index_put`` (slow on
CPU for ``[B, H, d]``). Here: the hinge is built in place in the GEMM's output (``addmm`` with
``margin - pos`` as its input), one mask per block, and the backward is three GEMMs and a bmm;
rows taken with ``index_select`` (backward: ``index_add_``). Same loss and gradient (printed).
On MovieLens-100K batch 512 with 6 hard negatives, 1 thread: 4.4 -> 2.3 ms CPU a step
(``benchmarks/TRAINING.md``). The ``stats`` of ``max_margin_loss`` (violated share from the masks,
mean scores) would be added under ``no_grad``.
"""
import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE"); os.environ.setdefault("WANDB_MODE", "disabled")
# no options; --help says what it measures (and starts nothing)
argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
import numba
import torch
import training as T

from models.loss import max_margin_loss


class MaxMargin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zq, zp, ze, zh, margin):
        pos = (zq * zp).sum(1, keepdim=True)                      # [B,1]
        se = torch.addmm(margin - pos, zq, ze.t(), beta=1)        # hinge easy [B,N] = zq ze^T - pos + m
        sh = torch.bmm(zh, zq.unsqueeze(2)).squeeze(2).sub_(pos).add_(margin)  # [B,H]
        cnt = se.size(1) + sh.size(1)
        me, mh = se > 0, sh > 0
        loss = (se.clamp_(min=0).sum() + sh.clamp_(min=0).sum()) / (zq.size(0) * cnt)
        ctx.save_for_backward(zq, zp, ze, zh, me, mh); ctx.cnt = cnt
        return loss
    @staticmethod
    def backward(ctx, g):
        zq, zp, ze, zh, me, mh = ctx.saved_tensors
        s = g / (zq.size(0) * ctx.cnt)
        ge = me.to(zq.dtype).mul_(s); gh = mh.to(zq.dtype).mul_(s)      # [B,N], [B,H]
        rs = (ge.sum(1) + gh.sum(1)).unsqueeze(1)                         # [B,1]
        d_zq = torch.addmm(torch.bmm(gh.unsqueeze(1), zh).squeeze(1), ge, ze).sub_(rs * zp)
        d_zp = -rs * zq
        d_ze = ge.t() @ zq
        d_zh = gh.unsqueeze(2) * zq.unsqueeze(1)
        return d_zq, d_zp, d_ze, d_zh, None

dm, mod = T._build(512, 0, 6); dm.train_dataloader(); data = dm.train_dataset()
batch = data[next(iter(dm._train_sampler))]
torch.set_num_threads(1); numba.set_num_threads(1)
z = mod.model(batch.x, batch.node_ids, batch.blocks).detach().requires_grad_()
def ref():
    l, _ = max_margin_loss(z[batch.query], z[batch.pos], z[batch.easy_neg], z[batch.hard_neg], 0.1); l.backward(); return l
def ref_is():
    hn = batch.hard_neg
    l, _ = max_margin_loss(z.index_select(0, batch.query), z.index_select(0, batch.pos), z.index_select(0, batch.easy_neg), z.index_select(0, hn.reshape(-1)).view(*hn.shape, -1), 0.1); l.backward(); return l
def fused():
    hn = batch.hard_neg
    l = MaxMargin.apply(z.index_select(0, batch.query), z.index_select(0, batch.pos), z.index_select(0, batch.easy_neg), z.index_select(0, hn.reshape(-1)).view(*hn.shape, -1), 0.1); l.backward(); return l
z.grad = None; a = ref(); ga = z.grad.clone(); z.grad = None; b = fused(); gb = z.grad.clone()
print("loss", a.item(), b.item(), "max grad diff", (ga - gb).abs().max().item())
if not (torch.allclose(a, b, atol=1e-6) and torch.allclose(ga, gb, atol=1e-6)):
    raise SystemExit("the fused loss differs from models.loss.max_margin_loss")
def t(f, reps=60):
    for _ in range(5): f()
    v = []
    for _ in range(reps):
        z.grad = None; c = time.process_time(); f(); v.append(time.process_time() - c)
    v.sort(); return f"min {v[0]*1e3:.2f} med {v[len(v)//2]*1e3:.2f} ms CPU"
for n, f in [("models.loss, z[idx]", ref), ("models.loss, index_select", ref_is), ("fused node, index_select", fused), ("models.loss, z[idx]", ref)]:
    print(f"{n:30s} {t(f)}")
