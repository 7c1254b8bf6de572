"""Feature absorption on the first-letter task (Chanin et al. 2024; SAEBench's ``absorption_first_letter``),
measured on the encoder side only, so it is valid for a transcoder, for every Matryoshka prefix.

Data: single-token words of the model's own vocabulary (a leading-space token of ASCII letters only), labelled
by their first letter. Each word is run as ``[BOS, word]`` and the input-site activation x [d_in] at the word is
kept. (SAEBench's prompt ``"{word} has the first letter:"`` puts the word first, so under causal attention the
activation at the word is the same as here.) Words are split train/test (seeded).

1. Ground-truth probes: 26 one-vs-rest logistic probes on x (class-balanced, L2); "the probe fires" = logit > 0.
   Letters whose probe has test F1 < ``min_probe_f1`` are not scored (SAEBench: 0.6).
2. Main latents of letter L, per prefix p (latents [0, e_p)): latents are ranked by the standardized difference
   of their mean activation on L-words vs. the rest (train split); for k = 1..``max_k`` a logistic probe on the
   top-k latents is fitted and scored by test F1; k grows while F1 improves by more than ``f1_jump`` (SAEBench's
   feature-split rule, 0.03). The chosen set S is the letter's main latents; ``n_split`` = |S|.
   (SAEBench ranks with an L1-regularised probe's weights; a mean-difference ranking is cheaper and gives the
   same ranking restricted to any prefix, so prefixes differ only in which latents are allowed.)
3. Absorption, on test words of letter L where the ground-truth probe fires (probe true positives, TP):
   the letter direction is p = probe weight / |probe weight|; x_perp = x - (x.p) p removes it. The letter
   evidence a latent carries on a word is e_f = max(0, a_f(x) - a_f(x_perp)) * |W_dec[f]| (activation lost
   when the letter is removed, in output-norm units so latents compare). This is causal and uses the encoder
   only; SAEBench's version projects decoder rows onto the probe, which needs the decoder to write into the
   probe's space (true for an SAE, not for a transcoder, whose decoder writes the MLP output).
   - false negative: none of S fires on the word.
   - absorber candidates: latents outside S that depend on the letter on this word (removing it costs them at
     least ``dependence`` = half of their activation: e_f >= 0.5 a_f |W_dec[f]|). This stands in for SAEBench's
     probe-cosine thresholds, which again are decoder-side.
   - absorption fraction (SAEBench's partial + full absorption): with E = sum_f e_f, E_S = sum over S and A the
     sum of the 3 largest candidates' e_f: if E > 0 and A >= 0.4 E, A / (A + E_S), else 0.
   - full absorption: a false negative where one candidate carries >= 0.4 E (E > 0).
   Per letter: rates over its TP words; per prefix: means over scored letters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"
_WORD = re.compile(r"^[A-Za-z]+$")


@dataclass
class AbsorptionConfig:
    """Knobs of the absorption measurement (defaults follow SAEBench where it has one)."""

    max_words_per_letter: int = 300
    min_word_len: int = 2
    test_fraction: float = 0.3
    seed: int = 0
    max_k: int = 10
    f1_jump: float = 0.03
    min_probe_f1: float = 0.6
    min_true_positives: int = 5
    proportion: float = 0.4  # share of the letter evidence the absorbers must carry
    dependence: float = 0.5  # an absorber loses at least this share of its activation without the letter
    max_absorbers: int = 3
    probe_l2: float = 1e-3
    batch_words: int = 256


# ------------------------------------------------------------------------------------------------ words
def vocab_words(tokenizer: Any, cfg: AbsorptionConfig | None = None) -> tuple[list[int], list[str]]:
    """Single-token words of the tokenizer: (token ids, words) whose token is a space + ASCII letters.

    At most ``max_words_per_letter`` per first letter (a seeded sample), so letters stay balanced and the run short.
    """
    cfg = cfg or AbsorptionConfig()
    V = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(V)))
    by_letter: dict[str, list[tuple[int, str]]] = {c: [] for c in LETTERS}
    for i, p in enumerate(pieces):
        if not isinstance(p, str) or not p or p[0] not in ("▁", "Ġ", " "):
            continue
        w = p[1:]
        if len(w) >= cfg.min_word_len and _WORD.match(w) and w.isascii():
            by_letter[w[0].lower()].append((i, w))
    gen = torch.Generator().manual_seed(cfg.seed)
    ids: list[int] = []
    words: list[str] = []
    for c in LETTERS:
        lst = by_letter[c]
        if len(lst) > cfg.max_words_per_letter:
            pick = torch.randperm(len(lst), generator=gen)[: cfg.max_words_per_letter].sort().values
            lst = [lst[j] for j in pick.tolist()]
        ids += [i for i, _ in lst]
        words += [w for _, w in lst]
    return ids, words


def letter_labels(words: Sequence[str]) -> torch.Tensor:
    """[n] int64 index of each word's first letter in ``LETTERS``."""
    return torch.tensor([LETTERS.index(w[0].lower()) for w in words], dtype=torch.int64)


@torch.no_grad()
def word_activations(model: Any, sites: Any, ids: Sequence[int], batch: int = 256) -> torch.Tensor:
    """[n, d_in] float32 input-site activations at each word, run as ``[BOS, word]``."""
    bos = model.tokenizer.bos_token_id if getattr(model, "tokenizer", None) is not None else 2
    dev = model.cfg.device
    out = []
    for s in range(0, len(ids), batch):
        chunk = torch.tensor(ids[s : s + batch], dtype=torch.long)
        toks = torch.stack([torch.full_like(chunk, bos), chunk], dim=1).to(dev)
        _, cache = model.run_with_cache(toks, names_filter=[sites.input_hook], stop_at_layer=sites.layer + 1)
        out.append(cache[sites.input_hook][:, 1].float().cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ probes
def fit_logistic(
    X: torch.Tensor, Y: torch.Tensor, l2: float = 1e-3, iters: int = 100, standardize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent class-balanced logistic regressions, batched.

    X [c, n, d] (or [n, d], shared by every problem), Y [c, n] in {0, 1} -> (W [c, d], b [c]).
    Full-batch L-BFGS on the sum of the per-problem losses (the problems share no parameter). ``standardize``
    fits on z-scored features (for latent activations, whose scales differ); without it the L2 penalty acts on raw
    weights, as for the ground-truth probe, whose direction is used (a z-scored fit would let rare input
    dimensions, scaled up, take large raw weights).
    """
    Y = Y.float()
    c = Y.shape[0]
    d = X.shape[-1]
    mu = X.mean(dim=-2, keepdim=True)
    sd = X.std(dim=-2, keepdim=True).clamp_min(1e-6)
    if not standardize:
        mu, sd = torch.zeros_like(mu), torch.ones_like(sd)
    Xs = (X - mu) / sd  # standardized: one l2 and one step size fit every feature
    pos = Y.sum(1, keepdim=True).clamp_min(1)
    neg = (Y.shape[1] - Y.sum(1, keepdim=True)).clamp_min(1)
    wts = torch.where(Y > 0, 0.5 / pos, 0.5 / neg)  # balanced: each class weighs one half
    W = torch.zeros(c, d, requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = (Xs @ W.unsqueeze(-1)).squeeze(-1) if Xs.dim() == 3 else Xs @ W.T
        z = z + b[:, None] if Xs.dim() == 3 else (z + b).T
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, Y, reduction="none") * wts).sum()
        loss = loss + l2 * (W**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    W, b = W.detach(), b.detach()
    W_raw = W / sd.squeeze(-2)  # back to raw feature units
    b_raw = b - (W_raw * mu.squeeze(-2)).sum(-1)
    return W_raw, b_raw


def f1_scores(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """pred, y [c, n] bool -> [c] F1 (0 where undefined)."""
    tp = (pred & y).sum(1).double()
    fp = (pred & ~y).sum(1).double()
    fn = (~pred & y).sum(1).double()
    return torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn), torch.zeros_like(tp))


# ------------------------------------------------------------------------------------------------ result
@dataclass
class LetterResult:
    letter: str
    main_latents: list[int]
    f1_sparse: float
    n_true_positives: int
    false_negative_rate: float
    absorption_rate: float
    full_absorption_rate: float
    absorbers: list[tuple[int, int]] = field(default_factory=list)  # (latent, number of words it absorbed)
    examples: list[tuple[str, int]] = field(default_factory=list)  # (fully absorbed word, absorbing latent)


@dataclass
class PrefixAbsorption:
    prefix: int
    latents: int
    letters: list[LetterResult]

    def summary(self) -> dict[str, float]:
        ls = self.letters
        n = max(len(ls), 1)
        return {
            "prefix": self.prefix,
            "latents": self.latents,
            "letters_scored": len(ls),
            "absorption_rate": sum(r.absorption_rate for r in ls) / n,
            "full_absorption_rate": sum(r.full_absorption_rate for r in ls) / n,
            "false_negative_rate": sum(r.false_negative_rate for r in ls) / n,
            "mean_split_latents": sum(len(r.main_latents) for r in ls) / n,
            "mean_f1_sparse": sum(r.f1_sparse for r in ls) / n,
        }


@dataclass
class AbsorptionResult:
    name: str
    n_words: int
    probe_f1: dict[str, float]
    prefixes: list[PrefixAbsorption]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_words": self.n_words,
            "probe_f1": self.probe_f1,
            "prefixes": [{**p.summary(), "letters": [r.__dict__ for r in p.letters]} for p in self.prefixes],
        }


# ------------------------------------------------------------------------------------------------ core
def _dense_acts(tc: Any, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """[n, F] float32 dense activations of tc on x [n, d_in]."""
    with torch.no_grad():
        return torch.cat([tc.encode(x[s : s + batch]).to_dense().float().cpu() for s in range(0, len(x), batch)])


def _decoder_norms(tc: Any) -> torch.Tensor:
    W = tc.decoder_weights()
    if W is None:
        return torch.ones(tc.num_latents)
    n = W.detach().float().norm(dim=1).cpu()
    scale = getattr(getattr(tc, "model", None), "y_scale", None)  # ours: activations in scaled units
    return n / float(scale) if scale is not None else n


@torch.no_grad()
def absorption_from_activations(
    tc: Any,
    x: torch.Tensor,
    labels: torch.Tensor,
    words: Sequence[str] | None = None,
    cfg: AbsorptionConfig | None = None,
    name: str | None = None,
) -> AbsorptionResult:
    """The measurement on given word activations x [n, d_in] with first-letter labels [n] (module docstring)."""
    cfg = cfg or AbsorptionConfig()
    words = list(words) if words is not None else [f"w{i}" for i in range(len(x))]
    n = len(x)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen)
    n_test = max(1, int(round(n * cfg.test_fraction)))
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    C = len(LETTERS)
    Y = torch.nn.functional.one_hot(labels, C).T.bool()  # [C, n]
    present = [c for c in range(C) if int(Y[c, tr].sum()) >= 2 and int(Y[c, te].sum()) >= 1]

    # 1. ground-truth probes on the input site
    Wp, bp = fit_logistic(x[tr].float(), Y[:, tr], l2=cfg.probe_l2, standardize=False)
    probe_fires = (x[te].float() @ Wp.T + bp).T > 0  # [C, n_test]
    probe_f1 = f1_scores(probe_fires, Y[:, te])
    letters = [c for c in present if float(probe_f1[c]) >= cfg.min_probe_f1]

    A = _dense_acts(tc, x.float())  # [n, F]
    dec_norm = _decoder_norms(tc)
    ends = list(tc.prefix_ends) if getattr(tc, "prefix_ends", None) else [tc.num_latents]
    # mean-difference ranking score of every latent for every letter (train split)
    At = A[tr]
    sd = At.std(0).clamp_min(1e-6)
    Yt = Y[:, tr].float()
    mean_in = (Yt @ At) / Yt.sum(1, keepdim=True).clamp_min(1)
    mean_out = ((1 - Yt) @ At) / (1 - Yt).sum(1, keepdim=True).clamp_min(1)
    score = (mean_in - mean_out) / sd  # [C, F]
    live = (A > 0).any(0)
    score[:, ~live] = float("-inf")

    # per letter: TP words, their evidence per latent (prefix-independent: one shared selection)
    ev: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for c in letters:
        tp = te[probe_fires[c] & Y[c, te]]
        if len(tp) < cfg.min_true_positives:
            continue
        p = Wp[c] / Wp[c].norm().clamp_min(1e-12)
        xs = x[tp].float()
        x_perp = xs - (xs @ p)[:, None] * p[None, :]
        a, a_perp = A[tp], _dense_acts(tc, x_perp)
        ev[c] = (tp, a, (a - a_perp).clamp_min(0) * dec_norm[None, :])

    prefixes = []
    for pi, e in enumerate(ends):
        allowed = torch.full((tc.num_latents,), float("-inf"))
        allowed[:e] = 0
        s = score + allowed
        kmax = max(1, min(cfg.max_k, int(torch.isfinite(s).sum(1).max())))
        top = s.topk(kmax, dim=1).indices  # [C, kmax]
        # 2. k-sparse probes for k = 1..kmax on every letter at once
        f1_k = torch.zeros(kmax, C)
        for k in range(1, kmax + 1):
            Xk = A[:, top[:, :k]].permute(1, 0, 2)  # [C, n, k]
            W, b = fit_logistic(Xk[:, tr], Y[:, tr], iters=50)
            pred = ((Xk[:, te] @ W.unsqueeze(-1)).squeeze(-1) + b[:, None]) > 0
            f1_k[k - 1] = f1_scores(pred, Y[:, te]).float()
        out = []
        for c in letters:
            if c not in ev:
                continue
            best, k_sel = -1.0, 1
            for k in range(1, kmax + 1):
                if float(f1_k[k - 1, c]) > best + cfg.f1_jump:
                    best, k_sel = float(f1_k[k - 1, c]), k
                else:
                    break
            main = [int(i) for i in top[c, :k_sel].tolist() if torch.isfinite(s[c, i])]
            out.append(_score_letter(c, main, best, ev[c], dec_norm, e, words, cfg))
        prefixes.append(PrefixAbsorption(pi + 1, e, out))
    return AbsorptionResult(
        name or getattr(tc, "name", "transcoder"),
        n,
        {LETTERS[c]: float(probe_f1[c]) for c in present},
        prefixes,
    )


def _score_letter(
    c: int,
    main: list[int],
    f1: float,
    ev: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    dec_norm: torch.Tensor,
    end: int,
    words: Sequence[str],
    cfg: AbsorptionConfig,
) -> LetterResult:
    """Absorption statistics of one letter within latents [0, end) (see the module docstring, step 3)."""
    tp, a, e = ev
    a, e = a[:, :end], e[:, :end]
    m = torch.zeros(end, dtype=torch.bool)
    m[main] = True
    fn = ~(a[:, m] > 0).any(1)  # [T] no main latent fires
    E = e.sum(1)
    E_main = e[:, m].sum(1)
    # absorber candidates: outside S and letter-dependent (they lose >= half their activation without the letter)
    dependent = e >= cfg.dependence * a.clamp_min(0) * dec_norm[None, :end]
    other = e.masked_fill(m[None, :] | ~dependent, 0)
    k = min(cfg.max_absorbers, end)
    topv, topi = other.topk(k, dim=1)
    A_sum = topv.sum(1)
    absorbed = (E > 0) & (A_sum >= cfg.proportion * E)
    frac = torch.where(absorbed, A_sum / (A_sum + E_main).clamp_min(1e-12), torch.zeros_like(E))
    full = fn & (E > 0) & (topv[:, 0] >= cfg.proportion * E)
    T = len(tp)
    counts: dict[int, int] = {}
    examples = []
    for j in full.nonzero().squeeze(1).tolist():
        f = int(topi[j, 0])
        counts[f] = counts.get(f, 0) + 1
        if len(examples) < 8:
            examples.append((words[int(tp[j])], f))
    return LetterResult(
        letter=LETTERS[c],
        main_latents=main,
        f1_sparse=f1,
        n_true_positives=T,
        false_negative_rate=float(fn.float().mean()),
        absorption_rate=float(frac.mean()),
        full_absorption_rate=float(full.float().mean()),
        absorbers=sorted(counts.items(), key=lambda t: (-t[1], t[0]))[:10],
        examples=examples,
    )


def measure_absorption(
    tc: Any, model: Any, sites: Any, cfg: AbsorptionConfig | None = None, cache: dict | None = None
) -> AbsorptionResult:
    """Absorption of ``tc`` on the LM's own vocabulary; ``cache`` (a dict) reuses words/activations across calls."""
    cfg = cfg or AbsorptionConfig()
    cache = cache if cache is not None else {}
    key = (sites.layer, sites.input_hook)
    if key not in cache:
        ids, words = vocab_words(model.tokenizer, cfg)
        cache[key] = (words, word_activations(model, sites, ids, cfg.batch_words))
    words, x = cache[key]
    dev_x = x.to(tc.device) if hasattr(tc, "device") else x
    return absorption_from_activations(tc, dev_x, letter_labels(words), words, cfg)


def markdown_table(results: Sequence[AbsorptionResult]) -> str:
    """One row per (transcoder, prefix): rates averaged over the scored letters."""
    lines = [
        "| transcoder | prefix | latents | letters | absorption | full absorption | false negatives | split latents |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for p in r.prefixes:
            s = p.summary()
            lines.append(
                f"| {r.name} | {s['prefix']} | {s['latents']} | {s['letters_scored']} | {s['absorption_rate']:.3f} | "
                f"{s['full_absorption_rate']:.3f} | {s['false_negative_rate']:.3f} | {s['mean_split_latents']:.2f} |"
            )
    return "\n".join(lines) + "\n"
