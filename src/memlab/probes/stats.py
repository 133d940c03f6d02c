"""Information measures of slot routing: entropy, mutual information, bias correction, permutation test.

All in bits.  MI(slot; label) is computed two ways: from the argmax slot of every token
(counts of a contingency table; Miller-Madow bias correction) and from the full routing
distributions (the joint ``P(label, slot) = mean_t 1[label_t] p_t(slot)``; corrected by
subtracting the mean MI of shuffled labels, so not corrected without permutations).  The
p-value is that of a permutation test: the share of label shuffles whose MI reaches the
observed one (+1 smoothing).  Given the token ids, a second null shuffles labels only among
equal tokens, so MI that token identity alone explains is not read as structure.  Tokens of a
text are not independent, so the p-value is optimistic; the shuffled mean is the baseline.
A bias-corrected MI is an estimate and may exceed H(label) (Miller-Madow raises the MI of a
sparse table); it is reported as computed, and its ratio to H(label) is clipped to 1 with
``ratio_corrected_clipped`` true where it was clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def entropy_bits(p: np.ndarray) -> float:
    """Entropy of a distribution (any shape; normalised here)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def mutual_information_bits(joint: np.ndarray) -> float:
    """MI of the two axes of a joint table of counts or probabilities (rows x columns)."""
    joint = np.asarray(joint, dtype=np.float64)
    joint = joint / joint.sum()
    rows, cols = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (rows @ cols)[nz])).sum())


def miller_madow_correction_bits(counts: np.ndarray) -> float:
    """Miller-Madow correction of the plug-in MI of a count table (add it to the plug-in MI).

    Each plug-in entropy is low by (m - 1) / 2N nats (m: non-empty bins), so MI = H(X) + H(Y) - H(X, Y)
    is high by ((R - 1) + (C - 1) - (RC - 1)) / 2N with R, C, RC the non-empty rows, columns, cells.
    The correction is negative for a table with more than R + C - 1 non-empty cells and positive
    for a sparser one (a one-to-one table: R = C = RC), so the corrected MI can exceed H(X).
    """
    counts = np.asarray(counts)
    n = counts.sum()
    rows, cols, cells = (counts.sum(1) > 0).sum(), (counts.sum(0) > 0).sum(), (counts > 0).sum()
    return float(((rows - 1) + (cols - 1) - (cells - 1)) / (2 * n * np.log(2)))


def _joint_argmax(labels: np.ndarray, slots: np.ndarray, n_labels: int, n_slots: int) -> np.ndarray:
    return np.bincount(labels * n_slots + slots, minlength=n_labels * n_slots).reshape(n_labels, n_slots)


def _joint_soft(labels: np.ndarray, routing: np.ndarray, n_labels: int) -> np.ndarray:
    """Summed in float64: a shuffle that keeps the joint in exact arithmetic must keep it up to rounding."""
    onehot = np.zeros((len(labels), n_labels))
    onehot[np.arange(len(labels)), labels] = 1
    return onehot.T @ routing.astype(np.float64)  # (n_labels, K)


def _p_value(null: np.ndarray, mi: float) -> float | None:
    """Permutation p-value (+1 smoothing; None without permutations).  A null MI reaches the
    observed one up to rounding: joints equal in exact arithmetic (routing by token identity under
    the within-token shuffle) tie, whatever the float summation order."""
    if not len(null):
        return None
    return float((1 + (null >= mi - (1e-12 + 1e-9 * abs(mi))).sum()) / (1 + len(null)))


def _mean(null: np.ndarray) -> float | None:
    return float(null.mean()) if len(null) else None


def within_token_shuffle(labels: np.ndarray, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``labels`` permuted among the positions that hold the same token id."""
    order = np.argsort(tokens, kind="stable")
    shuffled = np.lexsort((rng.random(len(tokens)), tokens))  # same token ids, random order within each
    out = np.empty_like(labels)
    out[order] = labels[shuffled]
    return out


def mi_test(
    labels: np.ndarray,
    routing: np.ndarray,
    n_labels: int,
    permutations: int = 200,
    seed: int = 0,
    tokens: np.ndarray | None = None,
) -> dict[str, Any]:
    """MI(slot; label) from argmax slots and from full distributions, with baselines and p-values.

    ``labels (N,)`` are ints in [0, n_labels); ``routing (N, K)`` are routing distributions.
    ``ratio_corrected`` (corrected MI / H(label)) is clipped to 1, and ``ratio_corrected_clipped``
    says whether it was.
    With ``tokens (N,)`` (the token ids) a second null shuffles the labels only among equal
    tokens: routing that depends on the token alone (``def`` always goes to slot 3) scores MI
    against plain shuffles, but none in excess of this one.
    """
    n_slots = routing.shape[1]
    slots = routing.argmax(1)
    h_label = entropy_bits(np.bincount(labels, minlength=n_labels))
    rng = np.random.default_rng(seed)
    nulls = {"shuffled": [rng.permutation(labels) for _ in range(permutations)]}
    if tokens is not None:
        nulls["within_token"] = [within_token_shuffle(labels, tokens, rng) for _ in range(permutations)]
    counts = _joint_argmax(labels, slots, n_labels, n_slots)
    out = {}
    for kind, joint_of in (
        ("argmax", lambda lab: _joint_argmax(lab, slots, n_labels, n_slots)),
        ("soft", lambda lab: _joint_soft(lab, routing, n_labels)),
    ):
        mi = mutual_information_bits(joint_of(labels))
        null = {name: np.array([mutual_information_bits(joint_of(s)) for s in shuffles])
                for name, shuffles in nulls.items()}  # fmt: skip
        shuffled = null["shuffled"]
        if kind == "argmax":
            corrected = mi + miller_madow_correction_bits(counts)
        else:  # the soft MI's bias is measured by its shuffles: unknown without them
            corrected = mi - shuffled.mean() if permutations else None
        ratio_corrected = corrected / h_label if h_label > 0 and corrected is not None else None
        out[kind] = {
            "bits": mi,
            "bits_corrected": corrected,
            "ratio": mi / h_label if h_label > 0 else None,  # undefined when the label never varies
            "ratio_corrected": None if ratio_corrected is None else min(ratio_corrected, 1.0),
            "ratio_corrected_clipped": bool(ratio_corrected is not None and ratio_corrected > 1),
            "shuffled_mean_bits": _mean(shuffled),
            "shuffled_std_bits": float(shuffled.std()) if permutations else None,
            "p_value": _p_value(shuffled, mi),
        }
        if "within_token" in null:
            same_token = null["within_token"]
            out[kind].update(
                within_token_mean_bits=_mean(same_token),
                excess_over_token_identity_bits=mi - same_token.mean() if permutations else None,
                p_value_within_token=_p_value(same_token, mi),
            )
    out["label_entropy_bits"] = h_label
    return out


def argmax_shares(routing: np.ndarray) -> np.ndarray:
    """(N, K) routing distributions -> (K,) share of the tokens whose largest weight is slot k."""
    return np.bincount(routing.argmax(1), minlength=routing.shape[1]) / max(len(routing), 1)


def cosine_similarity_matrix(profiles: np.ndarray) -> np.ndarray:
    """(M, F) profiles -> (M, M) cosine similarities."""
    unit = profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T
