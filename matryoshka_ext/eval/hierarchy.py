"""The latent hierarchy across Matryoshka groups, from co-firing on real tokens.

For every latent c in group g > 1 (0-based g >= 1), its parent is the latent p in an earlier group (p < start of
g) that fires on the most of c's tokens (ties: lower index). Reported per child:
    parent [F]       int64   -1 for group-1 latents and for children that never co-fire with an earlier latent
    p_parent [F]     float32 P(parent fires | child fires) over the scanned tokens
    p_child [F]      float32 P(child fires | parent fires)
    parent_cos [F]   float32 cosine of the two decoder rows (NaN without a linear decoder)
    lift [F]         float32 P(parent | child) / P(parent): how much more often than its base rate the parent fires
                     with the child (a dense parent co-fires with everything; a high lift is a real dependence)
The counts come from one sparse product B^T B of the [N, F] 0/1 firing matrix (scipy CSR), so nothing of size
F x F is dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Hierarchy:
    ends: list[int]
    parent: torch.Tensor
    p_parent: torch.Tensor
    p_child: torch.Tensor
    parent_cos: torch.Tensor
    fire_count: torch.Tensor
    lift: torch.Tensor

    def children(self, latent: int) -> list[int]:
        """Children of ``latent``, most dependent first (P(parent | child) descending, then index)."""
        idx = (self.parent == latent).nonzero().squeeze(1)
        order = sorted(idx.tolist(), key=lambda c: (-float(self.p_parent[c]), c))
        return order

    def group_summary(self) -> list[dict[str, Any]]:
        """Per group: latents, live, children with a parent, mean/median P(parent | child), mean decoder cosine,
        and the share whose parent sits in the group just before."""
        starts = [0] + self.ends[:-1]
        grp = torch.bucketize(torch.arange(len(self.parent)), torch.tensor(self.ends), right=True)
        out = []
        for g, (a, b) in enumerate(zip(starts, self.ends)):
            live = self.fire_count[a:b] > 0
            row: dict[str, Any] = {"group": g + 1, "latents": b - a, "live": int(live.sum())}
            if g > 0:
                has = self.parent[a:b] >= 0
                pp = self.p_parent[a:b][has]
                cs = self.parent_cos[a:b][has]
                prev = grp[self.parent[a:b][has]] == g - 1
                row.update(
                    with_parent=int(has.sum()),
                    mean_p_parent=float(pp.mean()) if len(pp) else float("nan"),
                    median_p_parent=float(pp.median()) if len(pp) else float("nan"),
                    frac_p_parent_over_0_9=float((pp > 0.9).float().mean()) if len(pp) else float("nan"),
                    mean_parent_cos=float(cs.nanmean()) if len(cs) else float("nan"),
                    median_lift=float(self.lift[a:b][has].median()) if len(pp) else float("nan"),
                    frac_parent_in_previous_group=float(prev.float().mean()) if len(pp) else float("nan"),
                )
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ends": self.ends, "groups": self.group_summary()}


def firing_matrix(rows: torch.Tensor, latents: torch.Tensor, n_rows: int, num_latents: int) -> Any:
    """scipy CSR [n_rows, num_latents] float32 0/1 of the positive entries (row, latent)."""
    from scipy import sparse

    data = np.ones(len(rows), dtype=np.float32)
    B = sparse.csr_matrix((data, (rows.numpy(), latents.numpy())), shape=(n_rows, num_latents))
    B.data[:] = 1.0  # duplicates (none expected) stay 0/1
    return B


def build_hierarchy(
    rows: torch.Tensor,
    latents: torch.Tensor,
    n_rows: int,
    ends: Sequence[int],
    W_dec: torch.Tensor | None = None,
) -> Hierarchy:
    """Parents of every latent from its positive entries: rows [E], latents [E] (token row, latent id)."""
    ends = [int(e) for e in ends]
    F = ends[-1]
    B = firing_matrix(rows, latents, n_rows, F)
    fire = np.asarray(B.sum(0)).ravel()
    Cm = (B.T @ B).tocoo()  # [F, F] co-firing counts, sparse
    r, c, v = Cm.row, Cm.col, Cm.data
    starts = np.array([0] + ends[:-1])
    gstart = starts[np.searchsorted(np.array(ends), np.arange(F), side="right")]
    keep = c < gstart[r]  # parent candidates: earlier groups only
    r, c, v = r[keep], c[keep], v[keep]
    parent = np.full(F, -1, dtype=np.int64)
    co = np.zeros(F, dtype=np.float64)
    if len(r):
        o = np.lexsort((c, -v, r))  # by child, then count descending, then parent index
        r, c, v = r[o], c[o], v[o]
        first = np.ones(len(r), dtype=bool)
        first[1:] = r[1:] != r[:-1]
        parent[r[first]] = c[first]
        co[r[first]] = v[first]
    has = parent >= 0
    p_parent = np.where(has & (fire > 0), co / np.maximum(fire, 1), 0.0)
    pf = fire[np.where(has, parent, 0)]
    p_child = np.where(has, co / np.maximum(pf, 1), 0.0)
    lift = np.where(has & (pf > 0), p_parent / np.maximum(pf, 1) * n_rows, 0.0)
    cos = torch.full((F,), float("nan"))
    par = torch.from_numpy(parent)
    if W_dec is not None and has.any():
        W = W_dec.detach().float().cpu()
        Wn = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        idx = torch.from_numpy(np.nonzero(has)[0])
        cos[idx] = (Wn[idx] * Wn[par[idx]]).sum(1)
    return Hierarchy(
        ends=ends,
        parent=par,
        p_parent=torch.from_numpy(p_parent).float(),
        p_child=torch.from_numpy(p_child).float(),
        parent_cos=cos,
        fire_count=torch.from_numpy(fire).long(),
        lift=torch.from_numpy(lift).float(),
    )


def markdown_trees(
    h: Hierarchy, samples: Any = None, roots: int = 8, depth: int = 3, per_node: int = 4, min_fires: int = 5
) -> str:
    """Trees under the group-1 latents with the most descendants; each node with P(parent|child), lift, decoder
    cosine and (with ``samples``, a SampleSet) its top context. Children firing on < ``min_fires`` tokens are left
    out (their P is noise)."""
    from .browser import _md_escape

    vocab = samples.vocab() if samples is not None else {}

    def ctx(f: int) -> str:
        if samples is None:
            return ""
        cs = samples.contexts(f, vocab)[:1]
        if not cs:
            return ""
        c = cs[0]
        toks = [_md_escape(str(t)) for t in c["tokens"]]
        toks[c["center"]] = f"**{toks[c['center']]}**"
        return " — " + "".join(toks[max(0, c["center"] - 8) :])

    desc = torch.zeros(len(h.parent), dtype=torch.long)
    for f in range(len(h.parent) - 1, -1, -1):  # parents precede children: one backward sweep
        p = int(h.parent[f])
        if p >= 0:
            desc[p] += 1 + desc[f]
    first = list(range(h.ends[0]))
    first.sort(key=lambda f: (-int(desc[f]), f))
    lines = [
        "# Latent hierarchy",
        "",
        "P = P(parent fires | child fires); lift = P / P(parent fires); cos = decoder cosine with the parent; "
        "children firing on fewer than " + str(min_fires) + " tokens are left out.",
        "",
    ]
    for root in first[:roots]:
        if desc[root] == 0:
            break
        lines.append(f"- **{root}** ({int(desc[root])} descendants){ctx(root)}")

        def walk(f: int, d: int) -> None:
            if d >= depth:
                return
            for ch in [c for c in h.children(f) if int(h.fire_count[c]) >= min_fires][:per_node]:
                lines.append(
                    "  " * d + f"- {ch} (P {float(h.p_parent[ch]):.2f}, lift {float(h.lift[ch]):.1f}, "
                    f"cos {float(h.parent_cos[ch]):.2f}, fires {int(h.fire_count[ch])}){ctx(ch)}"
                )
                walk(ch, d + 1)

        walk(root, 1)
    return "\n".join(lines) + "\n"
