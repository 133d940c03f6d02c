"""Controls and intervals for the CDM reproduction (issue 7), on top of `memlab probe`.

The routing probe's shuffled-label baseline only tests "slot and depth are independent".  In code,
token identity alone predicts indentation depth (``class`` at depth 0, ``return`` deeper), and the
router sees the token embedding, so even a random router has MI(slot; depth) > 0.  This script adds:

* ``mi``: for a checkpoint (and, with ``--init``, a randomly initialised model of the same config):
  MI(argmax slot; indentation depth) / H(depth), Miller-Madow corrected (the probe's number), with
  a 95% basic block-bootstrap interval over the 256-token windows; the shuffled-label baseline; and a
  *within-token* permutation null (depth labels shuffled among tokens with the same id), whose mean
  is the MI that token identity alone explains.  ``excess`` = MI - within-token null mean is the
  depth information routing carries beyond the token; its p-value is the share of within-token
  shuffles reaching the observed MI.  Its interval bootstraps both terms together: each resample of
  windows recomputes the MI *and* its within-token null (``--null-reps`` shuffles), so the interval
  carries the null's sampling and shuffle variance and its covariance with the MI.
* ``val``: held-out cross-entropy (nats/token) and bits/byte with a 95% interval clustered by document.
* ``domains``: cosine similarity of slot-usage profiles between corpora with 95% bootstrap intervals.

Usage (OMP_NUM_THREADS=1):
    python experiments/cdm_source/controls.py mi      --checkpoint CKPT --corpus stdlib-code --init --out F.json
    python experiments/cdm_source/controls.py val     --checkpoint CKPT --corpus stdlib-code --out F.json
    python experiments/cdm_source/controls.py domains --checkpoint CKPT --out F.json [--val-fraction 0.05]
    python experiments/cdm_source/controls.py alpha_traj --checkpoint RUN_DIR --out F.json
    python experiments/cdm_source/controls.py paired_val --checkpoint A --other B --corpus C --out F.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from memlab.eval.hub import load_checkpoint
from memlab.models.lm import LanguageModel
from memlab.probes.activity import record_activity
from memlab.probes.corpus import read_probe_text
from memlab.probes.stats import (
    cosine_similarity_matrix,
    entropy_bits,
    miller_madow_correction_bits,
    mutual_information_bits,
)

MAX_DEPTH = 4


def mi_ratio(labels: np.ndarray, slots: np.ndarray, K: int, n_labels: int = MAX_DEPTH + 1) -> float:
    counts = np.bincount(labels * K + slots, minlength=n_labels * K).reshape(n_labels, K)
    h = entropy_bits(counts.sum(1))
    return (mutual_information_bits(counts) + miller_madow_correction_bits(counts)) / h


def within_token_shuffle(labels: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels permuted among the positions that hold the same token id."""
    order = np.argsort(ids, kind="stable")
    perm = np.lexsort((rng.random(len(ids)), ids))
    out = np.empty_like(labels)
    out[order] = labels[perm]
    return out


def window_index(text) -> np.ndarray:
    return np.concatenate([np.full(len(w), i) for i, w in enumerate(text.windows)])


def mi_report(model, text, reps: int, seed: int, null_reps: int = 5) -> list[dict]:
    acts = record_activity(model, text, 8)
    depth = text.flat("indent")
    ids = text.flat("ids")
    known = depth >= 0
    labels = np.minimum(depth[known], MAX_DEPTH).astype(np.int64)
    ids_k = ids[known]
    win = window_index(text)[known]
    n_win = len(text.windows)
    by_win = [np.flatnonzero(win == i) for i in range(n_win)]
    rng = np.random.default_rng(seed)
    out = []
    for a in acts:
        K = a.routing.shape[1]
        slots = a.routing[known].argmax(1)
        mi = mi_ratio(labels, slots, K)
        shuffled = np.array([mi_ratio(rng.permutation(labels), slots, K) for _ in range(reps)])
        within = np.array([mi_ratio(within_token_shuffle(labels, ids_k, rng), slots, K) for _ in range(reps)])
        excess = mi - within.mean()
        boot, boot_excess = [], []
        for _ in range(reps):
            pick = np.concatenate([by_win[i] for i in rng.integers(0, n_win, n_win)])
            lab, sl, tok = labels[pick], slots[pick], ids_k[pick]
            m = mi_ratio(lab, sl, K)
            null = np.mean([mi_ratio(within_token_shuffle(lab, tok, rng), sl, K) for _ in range(null_reps)])
            boot.append(m)
            boot_excess.append(m - null)  # the null of the same resample: MI and null vary together
        q_lo, q_hi = np.percentile(boot, [2.5, 97.5])
        lo, hi = 2 * mi - q_hi, 2 * mi - q_lo  # basic (reverse-percentile) interval: resampled windows
        # repeat tokens, which inflates the plug-in MI; the basic interval removes that bias
        e_lo, e_hi = np.percentile(boot_excess, [2.5, 97.5])
        ex_lo, ex_hi = 2 * excess - e_hi, 2 * excess - e_lo  # basic interval of MI - null, jointly resampled
        out.append({
            "layer": a.layer,
            "tokens": int(known.sum()),
            "mi_ratio_corrected": mi,
            "ci95": [float(lo), float(hi)],
            "shuffled_label_mean": float(shuffled.mean()),
            "shuffled_label_p": float((1 + (shuffled >= mi).sum()) / (1 + reps)),
            "within_token_null_mean": float(within.mean()),
            "within_token_null_std": float(within.std()),
            "within_token_p": float((1 + (within >= mi).sum()) / (1 + reps)),
            "excess_over_token_identity": float(excess),
            "excess_ci95": [float(ex_lo), float(ex_hi)],
            "excess_ci95_method": f"basic block bootstrap of MI - within-token null, both recomputed per "
                                  f"resample ({reps} resamples, {null_reps} shuffles each)",
            "max_slot_share": float(np.bincount(a.routing.argmax(1), minlength=K).max() / len(a.routing)),
        })  # fmt: skip
    return out


def summarise(layers: list[dict]) -> dict:
    keys = ("mi_ratio_corrected", "shuffled_label_mean", "within_token_null_mean", "excess_over_token_identity")
    return {f"mean_{k}": float(np.mean([layer[k] for layer in layers])) for k in keys}


@torch.no_grad()
def val_report(model, tokenizer, text) -> dict:
    model.eval()
    losses, counts, nbytes = [], [], []
    for w in text.windows:
        if len(w) < 2:
            continue
        ids = torch.from_numpy(w)[None]
        logits = model(ids)[0, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        losses.append(ce)
        counts.append(len(w) - 1)
        nbytes.append(len(tokenizer.decode(w[1:].tolist()).encode("utf-8")))
    losses, counts, nbytes = map(np.array, (losses, counts, nbytes))
    # documents: a window shorter than the window length ends its document (read_probe_text cuts each
    # document into windows in order); the interval is clustered by document, since windows of one
    # file are not independent
    full = max(len(w) for w in text.windows) - 1
    doc = np.concatenate([[0], np.cumsum(counts[:-1] < full)])
    ce = losses.sum() / counts.sum()
    bpb = losses.sum() / math.log(2) / nbytes.sum()

    def ratio_se(groups):  # delta-method standard error of sum(loss) / sum(count) over groups
        lg = np.bincount(groups, weights=losses)
        cg = np.bincount(groups, weights=counts)
        n = len(lg)
        return math.sqrt(n / (n - 1) * ((lg - ce * cg) ** 2).sum()) / cg.sum(), n

    se_w, n_w = ratio_se(np.arange(len(losses)))
    se_d, n_d = ratio_se(doc)
    return {
        "windows": n_w,
        "documents": n_d,
        "tokens": int(counts.sum()),
        "ce_nats_per_token": float(ce),
        "ce_ci95_windows": [float(ce - 1.96 * se_w), float(ce + 1.96 * se_w)],
        "ce_ci95": [float(ce - 1.96 * se_d), float(ce + 1.96 * se_d)],  # clustered by document
        "ppl": float(math.exp(ce)),
        "bits_per_byte": float(bpb),
        "bpb_ci95": [float(bpb * (ce - 1.96 * se_d) / ce), float(bpb * (ce + 1.96 * se_d) / ce)],
        "bytes_per_token": float(nbytes.sum() / counts.sum()),
        "per_window_ce_std": float((losses / counts).std()),
    }


@torch.no_grad()
def window_losses(model, text) -> tuple[np.ndarray, np.ndarray]:
    """Summed next-token loss and predicted-token count of every window."""
    model.eval()
    losses, counts = [], []
    for w in text.windows:
        if len(w) < 2:
            continue
        ids = torch.from_numpy(w)[None]
        logits = model(ids)[0, :-1].float()
        losses.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item())
        counts.append(len(w) - 1)
    return np.array(losses), np.array(counts)


def paired_val_report(model, other, text) -> dict:
    """CE(model) - CE(other) on the same windows, 95% interval clustered by document."""
    la, counts = window_losses(model, text)
    lb, _ = window_losses(other, text)
    full = counts.max()
    doc = np.concatenate([[0], np.cumsum(counts[:-1] < full)])
    diff = (la - lb).sum() / counts.sum()
    dg, cg = np.bincount(doc, weights=la - lb), np.bincount(doc, weights=counts)
    n = len(dg)
    se = math.sqrt(n / (n - 1) * ((dg - diff * cg) ** 2).sum()) / cg.sum()
    return {
        "documents": n,
        "tokens": int(counts.sum()),
        "ce_model": float(la.sum() / counts.sum()),
        "ce_other": float(lb.sum() / counts.sum()),
        "difference": float(diff),
        "difference_ci95": [float(diff - 1.96 * se), float(diff + 1.96 * se)],
    }


def domains_report(model, tokenizer, opts, reps: int, seed: int) -> dict:
    """Profiles: ``soft`` = mean routing distribution (what `memlab probe --probe domains` uses),
    ``argmax`` = share of tokens whose winner is each slot (the slot a hard-routed token writes)."""
    names, per_window = [], {"soft": [], "argmax": []}
    for spec in opts.domains:
        name, source = spec.split("=", 1)
        vf = opts.val_fraction if source == opts.trained_on else 0.01
        text = read_probe_text(source, tokenizer, opts.max_tokens, 256, "val", vf, 0)
        acts = record_activity(model, text, 8)
        win = window_index(text)
        counts = np.bincount(win)
        for kind in per_window:
            rows = []
            for i in range(len(text.windows)):
                parts = []
                for a in acts:
                    r = a.routing[win == i]
                    if kind == "argmax":
                        r = np.eye(r.shape[1])[r.argmax(1)]
                    parts.append(r.mean(0))
                rows.append(np.concatenate(parts))
            per_window[kind].append((np.stack(rows), counts))  # (windows, layers * K), (windows,)
        names.append(name)
    rng = np.random.default_rng(seed)
    off = ~np.eye(len(names), dtype=bool)
    out = {"domains": names}
    for kind, data in per_window.items():

        def profiles(picks, data=data):
            return np.stack([(p[i] * c[i, None]).sum(0) / c[i].sum() for (p, c), i in zip(data, picks)])

        full = cosine_similarity_matrix(profiles([np.arange(len(c)) for _, c in data]))
        boots = np.stack([
            cosine_similarity_matrix(profiles([rng.integers(0, len(c), len(c)) for _, c in data]))
            for _ in range(reps)
        ])  # fmt: skip
        pairs = {}
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                lo, hi = np.percentile(boots[:, i, j], [2.5, 97.5])
                pairs[f"{names[i]}~{names[j]}"] = {"cosine": float(full[i, j]), "ci95": [float(lo), float(hi)]}
        out[kind] = {
            "similarity": full.tolist(),
            "pairs": pairs,
            "mean_cross_domain": float(full[off].mean()),
            "mean_cross_domain_ci95": [float(x) for x in np.percentile(boots[:, off].mean(1), [2.5, 97.5])],
        }
    return out


def alpha_trajectory(run_dir: Path) -> dict:
    """V3: sigmoid(log_alpha) of every layer at every saved checkpoint (read from the weights)."""
    from safetensors.numpy import load_file

    from memlab.paths import checkpoint_dirs

    rows = []
    for path in checkpoint_dirs(run_dir):
        weights = load_file(str(path / "model.safetensors"))
        names = sorted(
            (k for k in weights if k.endswith("log_alpha")), key=lambda k: [int(t) for t in k.split(".") if t.isdigit()]
        )
        alphas = [(1 / (1 + np.exp(-weights[k].astype(np.float64)))).tolist() for k in names]
        rows.append({"step": int(path.name[5:]), "params": names, "alpha": alphas,
                     "spread": [float(np.ptp(a)) for a in alphas]})  # fmt: skip
    return {"checkpoints": rows}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("mi", "val", "paired_val", "domains", "alpha_traj"))
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--corpus", default="stdlib-code")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--max-tokens", type=int, default=32768)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--null-reps", type=int, default=5, help="mi: within-token shuffles per bootstrap resample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", action="store_true", help="mi: also a randomly initialised model of the same config")
    p.add_argument("--domains", nargs="+", default=["prose=stdlib-docs", "code=stdlib-code", "lists=lists"])
    p.add_argument("--trained-on", default="stdlib-docs", help="domains: the corpus whose val split to use")
    p.add_argument("--other", help="paired_val: the checkpoint to compare with")
    p.add_argument("--out", required=True)
    opts = p.parse_args()
    torch.manual_seed(opts.seed)
    if opts.what == "alpha_traj":
        Path(opts.out).write_text(json.dumps(alpha_trajectory(Path(opts.checkpoint)), indent=1))
        return
    model, tokenizer, model_dir, _ = load_checkpoint(opts.checkpoint, "cpu")
    doc: dict = {"checkpoint": opts.checkpoint, "model_dir": str(model_dir), "options": vars(opts)}
    if opts.what in ("mi", "val", "paired_val"):
        text = read_probe_text(opts.corpus, tokenizer, opts.max_tokens, 256, "val", opts.val_fraction, 0)
    if opts.what == "mi":
        doc["trained"] = {"layers": mi_report(model, text, opts.reps, opts.seed, opts.null_reps)}
        doc["trained"]["summary"] = summarise(doc["trained"]["layers"])
        if opts.init:
            torch.manual_seed(opts.seed)
            init = LanguageModel(model.config).eval()
            doc["random_init"] = {"layers": mi_report(init, text, opts.reps, opts.seed, opts.null_reps)}
            doc["random_init"]["summary"] = summarise(doc["random_init"]["layers"])
    elif opts.what == "val":
        doc["val"] = val_report(model, tokenizer, text)
    elif opts.what == "paired_val":
        other, other_tokenizer, *_ = load_checkpoint(opts.other, "cpu")
        if other_tokenizer.hash != tokenizer.hash:
            raise SystemExit("paired_val: the two checkpoints use different tokenizers")
        doc["paired_val"] = paired_val_report(model, other, text)
    else:
        doc["domains"] = domains_report(model, tokenizer, opts, opts.reps, opts.seed)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: v.get("summary", v) if isinstance(v, dict) else v for k, v in doc.items()
                      if k not in ("options",)}, indent=1)[:3000])  # fmt: skip


if __name__ == "__main__":
    main()
