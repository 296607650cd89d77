"""Next-token sampling as small pure functions over a logits vector.

Order (as llama.cpp and HF apply them): repetition penalty -> temperature ->
top-k -> top-p -> min-p -> draw. Temperature 0 is greedy.

The serving engine draws through :func:`draw`, which adds OpenAI's presence and frequency
penalties (over the generated tokens, after the repetition penalty), a constraint mask of the
allowed tokens (applied before top-k, so a structured output only ever draws allowed tokens)
and the log-probabilities of the choice, taken from the penalised logits before temperature
(what vLLM reports).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(logits: np.ndarray, previous: list[int], penalty: float) -> np.ndarray:
    """CTRL-style: divide positive logits of seen tokens by ``penalty``, multiply negative ones."""
    if penalty == 1.0 or not previous:
        return logits
    logits = logits.copy()
    seen = np.unique(np.asarray(previous, dtype=np.int64))
    vals = logits[seen]
    logits[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def logits_to_probs(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """Probabilities after temperature, top-k, top-p and min-p (zeros for removed tokens)."""
    z = logits.astype(np.float64) / p.temperature
    if p.top_k and p.top_k < z.size:
        keep = np.argpartition(-z, p.top_k - 1)[: p.top_k]   # exactly k, even when logits tie
        masked = np.full_like(z, -np.inf)
        masked[keep] = z[keep]
        z = masked
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if p.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        keep = cum - probs[order] < p.top_p          # keep the token that crosses top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
    if p.min_p > 0:
        probs = np.where(probs >= p.min_p * probs.max(), probs, 0.0)
    return probs / probs.sum()


def sample(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator, previous: list[int] = ()) -> int:
    logits = apply_repetition_penalty(np.asarray(logits, np.float32), list(previous), p.repetition_penalty)
    if p.temperature == 0:
        return int(np.argmax(logits))
    probs = logits_to_probs(logits, p)
    return int(rng.choice(probs.size, p=probs))


def apply_presence_frequency(logits: np.ndarray, output: list[int], presence: float, frequency: float) -> np.ndarray:
    """OpenAI's penalties: subtract ``presence`` once from every generated token's logit and
    ``frequency`` times the number of times it was generated."""
    if not output or (presence == 0 and frequency == 0):
        return logits
    ids, counts = np.unique(np.asarray(output, dtype=np.int64), return_counts=True)
    logits = logits.copy()
    logits[ids] -= np.float32(presence) + np.float32(frequency) * counts.astype(np.float32)
    return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    m = z.max()
    return z - m - np.log(np.exp(z - m).sum())


@dataclass
class Draw:
    token: int
    logprob: float | None = None                       # of ``token``, when asked for
    top_logprobs: list[tuple[int, float]] | None = None   # the k most likely, most likely first


def draw(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator, previous: list[int] = (),
         output: list[int] = (), mask: np.ndarray | None = None, logprobs: int | None = None) -> Draw:
    """One token for a request: ``previous`` is prompt + output (repetition penalty), ``output``
    the generated tokens (presence/frequency), ``mask`` the allowed tokens (None: all);
    ``logprobs`` k >= 0 also reports the chosen token's log-probability and the k most likely."""
    logits = apply_repetition_penalty(np.asarray(logits, np.float32), list(previous), p.repetition_penalty)
    logits = apply_presence_frequency(logits, list(output), p.presence_penalty, p.frequency_penalty)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != logits.shape:
            raise ValueError(f"constraint mask has shape {mask.shape}, the logits {logits.shape}")
        if not mask.any():
            raise ValueError("the constraint allows no token at all")
        allowed = np.where(mask, logits, -np.inf)
    else:
        allowed = logits
    if p.temperature == 0:
        token = int(np.argmax(allowed))
    else:
        probs = logits_to_probs(allowed, p)
        token = int(rng.choice(probs.size, p=probs))
    if logprobs is None:
        return Draw(token)
    lp = log_softmax(logits)
    top = np.argsort(-lp, kind="stable")[:logprobs] if logprobs else []
    return Draw(token, float(lp[token]), [(int(i), float(lp[i])) for i in top])
