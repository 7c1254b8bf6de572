"""Absorption on a planted case where the answer is known (no language model needed).

Words of three letters live in d=96: x = 2 e_L + u_w (e_L orthonormal letter directions, u_w a unit word part:
random in dims no planted latent reads, or, for the absorbed a-words, a token direction of their own).
Latents (ReLU transcoder, prefix ends [4, 4 + n_absorbed]):
  0        letter a, but its encoder is pushed off the "absorbed" a-words (it never fires on them)
  1, 2     letter b split in two: each fires on one half of the b-words (a planted sub-direction v1 / v2)
  3        letter c, clean
  4..      one token latent per absorbed a-word: e_a + its word's direction (in prefix 2 only)
Expected: a has one main latent; in prefix 2 every absorbed word is a false negative fully absorbed by its token
latent; in prefix 1 those words are false negatives nobody absorbs. b splits over 2 latents; b, c absorb nothing.
"""

import torch

from matryoshka_ext.eval.absorption import LETTERS, AbsorptionConfig, absorption_from_activations
from matryoshka_ext.loaders.base import SparseTranscoder

D, PER_LETTER, N_ABS = 96, 120, 24


def _planted(seed: int):
    g = torch.Generator().manual_seed(seed)
    xs, labels, absorbed_ids = [], [], []
    v1, v2 = torch.zeros(D), torch.zeros(D)
    v1[3], v2[4] = 1.0, 1.0
    u_abs = []
    for li, letter in enumerate("abc"):
        e = torch.zeros(D)
        e[li] = 1.0
        for j in range(PER_LETTER):
            u = torch.randn(D, generator=g)
            u[: 5 + N_ABS] = 0  # ordinary words vary in dims the planted latents never read
            u = u / u.norm()
            if letter == "a" and j < N_ABS:  # an absorbed word: its own token direction
                u = torch.zeros(D)
                u[5 + j] = 1.0
                absorbed_ids.append(len(xs))
                u_abs.append(u)
            x = 2 * e + u
            if letter == "b":
                x = x + (v1 if j % 2 == 0 else v2)
            xs.append(x)
            labels.append(LETTERS.index(letter))
    F = 4 + N_ABS
    W = torch.zeros(D, F)
    b = torch.zeros(F)
    W[0, 0] = 1.0
    for u in u_abs:
        W[:, 0] -= 3 * u
    b[0] = -1.0
    W[1, 1], W[3, 1], b[1] = 1.0, 2.0, -3.0
    W[1, 2], W[4, 2], b[2] = 1.0, 2.0, -3.0
    W[2, 3], b[3] = 1.0, -1.0
    for t, u in enumerate(u_abs):
        W[0, 4 + t] = 1.0
        W[:, 4 + t] += 2 * u
        b[4 + t] = -2.5
    W_dec = torch.randn(F, 8, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    tc = SparseTranscoder(W, b, W_dec, torch.zeros(8), activation="relu", prefix_ends=[4, F], name="planted")
    return tc, torch.stack(xs), torch.tensor(labels), set(absorbed_ids)


def test_planted_absorption_and_split(seed):
    tc, x, labels, absorbed = _planted(seed)
    cfg = AbsorptionConfig(seed=seed % 1000)
    res = absorption_from_activations(tc, x, labels, cfg=cfg)
    # the same seeded split as the measurement
    n = len(x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    test = set(perm[: int(round(n * cfg.test_fraction))].tolist())
    a_test = [i for i in test if int(labels[i]) == 0]
    expected = len([i for i in a_test if i in absorbed]) / len(a_test)
    assert 0 < expected < 0.5
    assert set(res.probe_f1) == {"a", "b", "c"} and min(res.probe_f1.values()) > 0.95

    p1, p2 = res.prefixes
    by1 = {r.letter: r for r in p1.letters}
    by2 = {r.letter: r for r in p2.letters}
    for by in (by1, by2):
        assert by["a"].main_latents == [0]
        assert sorted(by["b"].main_latents) == [1, 2]  # the planted split
        assert by["c"].main_latents == [3]
        for letter in "bc":
            assert by[letter].false_negative_rate == 0 and by[letter].absorption_rate == 0
            assert by[letter].full_absorption_rate == 0
        assert by["a"].n_true_positives == len(a_test)
        assert abs(by["a"].false_negative_rate - expected) < 1e-6
    # prefix 1: the absorbed words are plain false negatives (no latent there carries the letter)
    assert by1["a"].full_absorption_rate == 0 and by1["a"].absorption_rate == 0
    # prefix 2: each is fully absorbed, by its own token latent
    assert abs(by2["a"].full_absorption_rate - expected) < 1e-6
    assert abs(by2["a"].absorption_rate - expected) < 1e-6
    assert all(f >= 4 for f, _ in by2["a"].absorbers)
    s = p2.summary()
    assert abs(s["full_absorption_rate"] - expected / 3) < 1e-6 and abs(s["mean_split_latents"] - 4 / 3) < 1e-6


def test_no_absorber_means_no_absorption(seed):
    """Same words, but the absorbing token latents are removed from the encoder: absorption must vanish."""
    tc, x, labels, _ = _planted(seed)
    tc.W_enc[:, 4:] = 0
    tc.b_enc[4:] = -1.0
    res = absorption_from_activations(tc, x, labels, cfg=AbsorptionConfig(seed=seed % 1000))
    a = {r.letter: r for r in res.prefixes[-1].letters}["a"]
    assert a.false_negative_rate > 0 and a.full_absorption_rate == 0 and a.absorption_rate == 0
