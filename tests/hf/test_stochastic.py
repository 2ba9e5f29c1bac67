"""Stochastic losslessness: the speculative output distribution of the first
three tokens equals the target's exact distribution (chi-square, fixed seed),
for chain sampling, tree sampling with draft distributions, and deterministic
trees, at T=1.0 and T=0.7/top-p=0.9; and a broken verifier is caught."""

import itertools

import numpy as np
import pytest
import torch

from specpack.draft import Draft
from specpack.hf import generate
from specpack.kernels.sampling import process_logits
from specpack.protocols import NO_STOP, Proposer
from specpack.testing.broken_verifier import accept_all_verify
from specpack.proposers.model.draft_model import DraftModelProposer
from specpack.config import DraftModelConfig
from specpack.testing.tiny_models import tiny_vocab_llama

V = 6
K = 3
PROMPT = [0, 3, 1]
N = 3000


@pytest.fixture(scope="module")
def target():
    return tiny_vocab_llama(V, seed=0)


@pytest.fixture(scope="module")
def drafter_model():
    return tiny_vocab_llama(V, seed=5)


@torch.no_grad()
def exact_joint(model, temperature, top_p):
    """P(x1, x2, x3 | PROMPT) by enumeration, flattened in base-V order."""
    probs = np.zeros(V ** K)
    seqs = list(itertools.product(range(V), repeat=K))
    ids = torch.tensor([PROMPT + list(s) for s in seqs])
    logits = model(input_ids=ids).logits[:, len(PROMPT) - 1:len(PROMPT) - 1 + K]
    p = process_logits(logits.reshape(-1, V), temperature, top_p).reshape(len(seqs), K, V)
    for j, s in enumerate(seqs):
        probs[j] = float(np.prod([p[j, t, s[t]] for t in range(K)]))
    return probs


def chi_square_p(counts, expected_probs):
    """Pearson chi-square p-value, cells with expected < 5 pooled."""
    exp = expected_probs * counts.sum()
    order = np.argsort(exp)
    obs_c, exp_c, o_acc, e_acc = [], [], 0.0, 0.0
    for i in order:
        o_acc += counts[i]
        e_acc += exp[i]
        if e_acc >= 5:
            obs_c.append(o_acc)
            exp_c.append(e_acc)
            o_acc = e_acc = 0.0
    if e_acc > 0:
        obs_c[-1] += o_acc
        exp_c[-1] += e_acc
    obs_c, exp_c = np.array(obs_c), np.array(exp_c)
    stat = float(((obs_c - exp_c) ** 2 / exp_c).sum())
    df = len(exp_c) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


class FullTreeProposer(Proposer):
    """Deterministic drafts without probabilities: every token at depth 1,
    two fixed children under each, so every verification path is exercised."""

    def propose(self, batch, stop_rule=NO_STOP):
        out = []
        for v in batch:
            toks, pars = list(range(V)), [-1] * V
            for i in range(V):
                toks += [(i + 1) % V, (i + 2) % V]
                pars += [i, i]
            out.append(Draft(toks, pars))
        return out


def sample_counts(target, proposer, temperature, top_p, verifier=None, seed=0):
    res = generate(target, [PROMPT] * N, proposer, max_new_tokens=K, temperature=temperature,
                   top_p=top_p, seed=seed, max_nodes=32, max_depth=3, batch_size=N,
                   verifier=verifier)
    counts = np.zeros(V ** K)
    for toks in res.tokens:
        assert len(toks) == K
        counts[int(np.ravel_multi_index(toks, (V,) * K))] += 1
    return counts, res


SETTINGS = [(1.0, 1.0), (0.7, 0.9)]


def proposers(drafter_model):
    return {
        "chain-sampled": lambda: DraftModelProposer(
            drafter_model, DraftModelConfig(draft_model="m", mode="chain", seed=1), max_nodes=3),
        "tree-sampled": lambda: DraftModelProposer(
            drafter_model, DraftModelConfig(draft_model="m", mode="tree", tree_width=2,
                                            max_expand=2, seed=2), max_nodes=8),
        "tree-deterministic": FullTreeProposer,
    }


@pytest.mark.parametrize("temperature,top_p", SETTINGS)
@pytest.mark.parametrize("kind", ["chain-sampled", "tree-sampled", "tree-deterministic"])
def test_speculative_distribution_matches_target(target, drafter_model, kind, temperature, top_p):
    exact = exact_joint(target, temperature, top_p)
    counts, res = sample_counts(target, proposers(drafter_model)[kind](), temperature, top_p)
    p = chi_square_p(counts, exact)
    assert p > 1e-3, f"{kind} T={temperature} top_p={top_p}: chi-square p={p:.2e}"
    s = res.summary()
    assert s["accepted"] > 0.1 * N  # drafts were really accepted (not plain sampling)
    if top_p < 1:  # tokens outside the nucleus never appear
        assert counts[exact == 0].sum() == 0


def test_broken_verifier_is_rejected(target, drafter_model):
    exact = exact_joint(target, 1.0, 1.0)
    prop = proposers(drafter_model)["chain-sampled"]()
    counts, _ = sample_counts(target, prop, 1.0, 1.0, verifier=accept_all_verify)
    assert chi_square_p(counts, exact) < 1e-6


def test_chi_square_helper_detects_shift():
    rng = np.random.default_rng(0)
    p = np.full(20, 1 / 20)
    good = np.bincount(rng.choice(20, 5000, p=p), minlength=20)
    q = p.copy(); q[0] *= 1.6; q /= q.sum()
    bad = np.bincount(rng.choice(20, 5000, p=q), minlength=20)
    assert chi_square_p(good.astype(float), p) > 1e-3
    assert chi_square_p(bad.astype(float), p) < 1e-3
