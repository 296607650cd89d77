"""Sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeds."""

import numpy as np
import pytest

from rocmforge.sampler import SamplingParams, apply_repetition_penalty, logits_to_probs, sample

LOGITS = np.array([2.0, 1.0, 0.5, -0.5, 3.0, 0.0], dtype=np.float32)


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def params(**kw):
    base = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "seed": 0}
    base.update(kw)
    return SamplingParams(**base)


def chi2(counts, probs):
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def draw_counts(logits, p, n, seed=1234):
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(logits))
    for _ in range(n):
        counts[sample(logits, p, rng)] += 1
    return counts


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    for seed in range(20):
        z = np.random.default_rng(seed).normal(size=1000).astype(np.float32)
        assert sample(z, params(temperature=0), rng) == int(np.argmax(z))


def test_greedy_ignores_top_k_top_p_and_seed():
    p = params(temperature=0, top_k=2, top_p=0.1, min_p=0.5, seed=None)
    assert sample(LOGITS, p, np.random.default_rng()) == 4


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_matches_softmax(temperature):
    n = 20000
    counts = draw_counts(LOGITS, params(temperature=temperature), n)
    want = softmax(LOGITS / temperature)
    # 5 degrees of freedom: P(chi2 > 25) ~ 1e-4; the draws are seeded, so this is deterministic
    assert chi2(counts, want) < 25
    # and meaningful: the same counts are far from the distribution of a different temperature
    wrong = softmax(LOGITS / (temperature * 1.5))
    assert chi2(counts, wrong) > 100
    np.testing.assert_allclose(logits_to_probs(LOGITS, params(temperature=temperature)), want, rtol=1e-9)


def test_top_k_keeps_exactly_k():
    for k in range(1, len(LOGITS) + 1):
        probs = logits_to_probs(LOGITS, params(top_k=k))
        kept = set(np.flatnonzero(probs))
        assert kept == set(np.argsort(-LOGITS)[:k])
        np.testing.assert_allclose(probs[list(kept)], softmax(LOGITS[list(kept)]), rtol=1e-9)
        assert probs.sum() == pytest.approx(1.0)


def test_top_k_keeps_exactly_k_with_ties():
    z = np.array([1.0, 2.0, 2.0, 2.0, 0.0, 2.0], dtype=np.float32)
    for k in (1, 2, 3):
        probs = logits_to_probs(z, params(top_k=k))
        assert np.count_nonzero(probs) == k
        assert set(np.flatnonzero(probs)) <= {1, 2, 3, 5}


def test_top_k_zero_or_larger_than_vocab_is_off():
    for k in (0, len(LOGITS), 100):
        np.testing.assert_allclose(logits_to_probs(LOGITS, params(top_k=k)), softmax(LOGITS), rtol=1e-9)


def test_top_k_draws_only_from_the_top_k():
    counts = draw_counts(LOGITS, params(top_k=2), 2000)
    assert set(np.flatnonzero(counts)) == {0, 4}


PROBS = np.array([0.05, 0.5, 0.15, 0.3])   # sorted: 0.5, 0.3, 0.15, 0.05


@pytest.mark.parametrize("top_p, kept", [
    (0.45, {1}),            # the first token already reaches p
    (0.55, {1, 3}),         # 0.5 < p: the crossing token 0.3 is kept
    (0.7, {1, 3}),
    (0.85, {1, 3, 2}),      # 0.8 < p: 0.15 crosses
    (0.97, {1, 3, 2, 0}),
    (1.0, {1, 3, 2, 0}),
])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    probs = logits_to_probs(np.log(PROBS).astype(np.float32), params(top_p=top_p))
    assert set(np.flatnonzero(probs)) == kept
    idx = sorted(kept)
    np.testing.assert_allclose(probs[idx], PROBS[idx] / PROBS[idx].sum(), rtol=1e-5)


def test_top_p_distribution_is_renormalised():
    z = np.log(PROBS).astype(np.float32)
    counts = draw_counts(z, params(top_p=0.7), 20000)
    assert counts[0] == 0 and counts[2] == 0
    want = np.array([0.5, 0.3]) / 0.8
    assert chi2(counts[[1, 3]], want) < 15


@pytest.mark.parametrize("min_p, kept", [
    (0.05, {0, 1, 2, 3}),
    (0.2, {1, 2, 3}),      # 0.05 < 0.2 * 0.5
    (0.35, {1, 3}),        # 0.15 < 0.175
    (0.7, {1}),            # 0.3 < 0.35
])
def test_min_p(min_p, kept):
    probs = logits_to_probs(np.log(PROBS).astype(np.float32), params(min_p=min_p))
    assert set(np.flatnonzero(probs)) == kept
    assert probs.sum() == pytest.approx(1.0)


def test_repetition_penalty_pushes_seen_tokens_down():
    z = np.array([2.0, -2.0, 1.0, -1.0], dtype=np.float32)
    out = apply_repetition_penalty(z, [0, 1, 1], 2.0)
    assert out[0] == pytest.approx(1.0)    # positive logit: divided
    assert out[1] == pytest.approx(-4.0)   # negative logit: multiplied
    assert out[2] == 1.0 and out[3] == -1.0  # unseen: untouched
    assert z[0] == 2.0 and z[1] == -2.0    # the input is not modified
    # penalty < 1 rewards instead
    out = apply_repetition_penalty(z, [0, 1], 0.5)
    assert out[0] == pytest.approx(4.0) and out[1] == pytest.approx(-1.0)
    assert apply_repetition_penalty(z, [0], 1.0) is z


def test_repetition_penalty_changes_the_greedy_choice():
    z = np.array([3.0, 2.0, 0.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert sample(z, params(temperature=0), rng, previous=[0]) == 0
    assert sample(z, params(temperature=0, repetition_penalty=2.0), rng, previous=[0]) == 1


def test_same_seed_same_draws_and_different_seed_different_draws():
    z = np.random.default_rng(5).normal(size=500).astype(np.float32)
    p = params(temperature=1.5, top_k=100, top_p=0.95)

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [sample(z, p, rng) for _ in range(50)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_sample_does_not_modify_logits():
    z = LOGITS.copy()
    sample(z, params(temperature=0.8, top_k=3, repetition_penalty=1.3), np.random.default_rng(0), [0, 4])
    np.testing.assert_array_equal(z, LOGITS)


@pytest.mark.parametrize("kw", [
    {"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": -0.5}, {"min_p": 1.0},
    {"min_p": -0.1}, {"top_k": -1}, {"repetition_penalty": 0.0}, {"repetition_penalty": -1.0},
])
def test_invalid_params_raise_value_error(kw):
    with pytest.raises(ValueError) as exc:
        params(**kw)
    assert next(iter(kw)) in str(exc.value)
