# ruff: noqa: E501
"""Print markdown tables of the CDM reproduction from the run directories (after run.sh).

.venv/bin/python experiments/cdm_source/summarise.py [ROOT]     # default runs/experiments/cdm
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np


def load(path: Path) -> dict:
    doc = json.loads(path.read_text())
    return doc.get("results", doc)


def one(run: Path, pattern: str) -> Path | None:
    """The probe output of the largest step (by number: step966 sorts after step1293 as text)."""
    hits = sorted((run / "probes").glob(pattern), key=lambda p: [int(t) for t in re.findall(r"\d+", p.name)])
    return hits[-1] if hits else None


def fmt(x, nd=4):
    return "n/a" if x is None else f"{x:.{nd}f}"


def ci(pair, nd=4):
    return f"[{pair[0]:.{nd}f}, {pair[1]:.{nd}f}]"


def training(run: Path) -> None:
    s = json.loads((run / "summary.json").read_text())
    print(f"### training: {run.name}")
    print(f"- params {s['params']:,} ({s['non_embedding_params']:,} non-embedding), pattern {s['layer_pattern']}")
    print(
        f"- steps {s['steps']}, tokens {s['tokens_seen']:,}, wall {s['wall_time_s']:.0f} s "
        f"(train {s['seconds']['train']:.0f} s, eval {s['seconds']['eval']:.0f} s), {s['tokens_per_s']:.0f} tok/s"
    )
    f, b = s["final"], s["best"]
    print(
        f"- final train loss {f['loss']:.4f}; val loss {f['val_loss']:.4f} (ppl {f['val_ppl']:.2f}); "
        f"best val {b['val_loss']:.4f} at step {b['step']}"
    )
    p = one(run, "controls_val.json")
    if p:
        v = load(p)["val"]
        print(
            f"- held-out CE {v['ce_nats_per_token']:.4f} nats/token, 95% CI {ci(v['ce_ci95'])} (clustered by the {v.get('documents', '?')} documents; "
            f"windows only: {ci(v.get('ce_ci95_windows', v['ce_ci95']))}) over {v['windows']} "
            f"windows ({v['tokens']:,} tokens); {v['bits_per_byte']:.4f} bits/byte {ci(v['bpb_ci95'])}; "
            f"{v['bytes_per_token']:.2f} bytes/token"
        )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    print("- val loss over steps: " + ", ".join(f"{st}: {v:.3f}" for st, v in vals))
    last = rows[-1]
    aux = last.get("aux", {})
    print(f"- last aux terms: {', '.join(f'{k} {v:.4f}' for k, v in aux.items())}")
    d = last.get("diagnostics", {})
    layers = sorted({k.split(".")[0] for k in d if k.startswith("layer")})
    print(
        "- last-step diagnostics: "
        + "; ".join(
            f"{layer}: share {d[layer + '.max_slot_share']:.3f}, H {d[layer + '.usage_entropy']:.3f} bits, "
            f"gate {d[layer + '.mean_gate']:.3f}, alpha spread {d[layer + '.alpha_spread']:.3f}"
            for layer in layers
        )
    )
    print()


def routing(run: Path) -> None:
    p = one(run, "routing_probe_step*.json")
    if not p:
        return
    r = load(p)
    print(f"### routing probe ({p.name}; {r['tokens']} tokens of {r['corpus']}, {r['documents']} documents)")
    print(
        "| layer | max share | usage H (bits) | MI argmax ratio corr. | shuffled mean (bits) | p | "
        "MI soft ratio corr. | soft shuffled mean (bits) | p | bracket argmax ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for layer in r["layers"]:
        m = layer["indent"]["mi"]
        a, s = m["argmax"], m["soft"]
        print(
            f"| {layer['layer']} | {layer['max_slot_share']:.3f} | {layer['usage_entropy_bits']:.3f} | "
            f"{fmt(a['ratio_corrected'])} | {a['shuffled_mean_bits']:.5f} | {a['p_value']:.3f} | "
            f"{fmt(s['ratio_corrected'])} | {s['shuffled_mean_bits']:.6f} | {s['p_value']:.3f} | "
            f"{fmt(layer['bracket']['mi']['argmax']['ratio_corrected'])} |"
        )
    print(
        f"H(indent) = {r['layers'][0]['indent']['mi']['label_entropy_bits']:.3f} bits; tokens per depth "
        f"{r['layers'][0]['indent']['tokens_per_depth']}; summary: "
        + ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in r["summary"].items())
    )
    for layer in r["layers"]:
        dom = layer["indent"]["dominant_slots"]
        print(
            f"- layer {layer['layer']} dominant slots by depth (lift): "
            + "; ".join(f"d{d}: " + ",".join(f"s{x['slot']}({x['lift']:.1f})" for x in v) for d, v in dom.items())
        )
    print()


def controls_mi(run: Path) -> None:
    p = one(run, "controls_mi.json")
    if not p:
        return
    d = load(p)
    print(f"### MI controls ({p.name}): argmax MI(slot; indent)/H(indent), Miller-Madow corrected")
    print(
        "| model | layer | MI ratio | 95% CI (window bootstrap) | shuffled-label mean | within-token null "
        "| excess over token identity | p (within-token) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key in ("trained", "random_init"):
        if key not in d:
            continue
        for layer in d[key]["layers"]:
            print(
                f"| {key} | {layer['layer']} | {layer['mi_ratio_corrected']:.4f} | {ci(layer['ci95'])} | "
                f"{layer['shuffled_label_mean']:.5f} | {layer['within_token_null_mean']:.4f} ± "
                f"{layer['within_token_null_std']:.4f} | {layer['excess_over_token_identity']:.4f} "
                f"{ci(layer['excess_ci95'])} | {layer['within_token_p']:.3f} |"
            )
        s = d[key]["summary"]
        print(
            f"| {key} | mean | {s['mean_mi_ratio_corrected']:.4f} | | {s['mean_shuffled_label_mean']:.5f} | "
            f"{s['mean_within_token_null_mean']:.4f} | {s['mean_excess_over_token_identity']:.4f} | |"
        )
    print()


def gates(run: Path, top_layers: int = 4) -> None:
    p = one(run, "gates_probe_step*.json")
    if not p:
        return
    r = load(p)
    print(f"### gates probe ({p.name}; {r['tokens']} tokens of {r['corpus']})")
    for layer in r["layers"][:top_layers]:
        parts = []
        for s in sorted(layer["slots"], key=lambda s: -(s["favoured_role_mean_gate"] or 0.0)):
            trig = ",".join(repr(t["token"]) for t in s["triggers"][:3])
            parts.append(
                f"s{s['slot']} {s['favoured_role']} ({fmt(s['favoured_role_mean_gate'], 3)}; mean {s['mean_gate']:.3f}; {trig})"
            )
        print(f"- layer {layer['layer']}: " + "; ".join(parts))
    roles = r["roles"]
    print(
        "- per role, the slot with the largest mean gate (last layer): "
        + "; ".join(
            f"{role}: s{int(np.argmax(row))} {max(row):.3f}"
            for role, row in zip(roles, r["layers"][-1]["role_by_slot_mean_gate"])
        )
    )
    print()


def alphas(run: Path) -> None:
    p = one(run, "alphas_probe_step*.json")
    if not p:
        return
    r = load(p)
    print(f"### alphas probe ({p.name}; {r['alpha_kind']})")
    print("| layer | alpha mean | spread | std | fastest (alpha) | slowest (alpha) | fast outliers (> mean + 2 sd) |")
    print("|---|---|---|---|---|---|---|")
    for layer in r["layers"]:
        a = np.array(layer["alpha"])
        fast = [f"s{k} {a[k]:.3f}" for k in np.flatnonzero(a > a.mean() + 2 * a.std())]
        print(
            f"| {layer['layer']} | {layer['alpha_mean']:.3f} | {layer['alpha_spread']:.3f} | {layer['alpha_std']:.3f} | "
            + ", ".join(f"s{k} {a[k]:.3f}" for k in layer["fastest_slots"])
            + " | "
            + ", ".join(f"s{k} {a[k]:.3f}" for k in layer["slowest_slots"])
            + f" | {', '.join(fast) or 'none'} |"
        )
    for layer in r["layers"]:
        a = np.array(layer["alpha"])
        print(f"- layer {layer['layer']} alphas sorted: " + " ".join(f"{x:.3f}" for x in sorted(a, reverse=True)))
    print()


def domains(run: Path) -> None:
    p = one(run, "domains_probe_step*.json")
    if p:
        r = load(p)
        print(
            f"### domains probe ({p.name}): cosine of mean-routing profiles, all layers: "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["pairs"].items())
            + f"; mean cross-domain {r['mean_cross_domain_similarity']:.4f}; per layer mean: "
            + ", ".join(f"L{x['layer']} {x['mean_cross_domain_similarity']:.4f}" for x in r["layers"])
        )
    p = one(run, "controls_domains.json")
    if p:
        d = load(p)["domains"]
        for kind in ("soft", "argmax"):
            k = d[kind]
            print(
                f"- {kind} profiles: "
                + ", ".join(f"{n} {v['cosine']:.4f} {ci(v['ci95'])}" for n, v in k["pairs"].items())
                + f"; mean cross-domain {k['mean_cross_domain']:.4f} {ci(k['mean_cross_domain_ci95'])}"
            )
    print()


def trajectory(run: Path) -> None:
    p = one(run, "trajectory_probe_step*.json")
    if not p:
        return
    r = load(p)
    print(f"### trajectory ({p.name}, {r['tokens']} tokens of {r['corpus']})")
    series = r["series"]
    names = list(series)
    print("| step | " + " | ".join(f"{n} (mean; per layer)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for i, step in enumerate(r["steps"]):
        cells = []
        for n in names:
            per = [series[n][k][i] for k in series[n] if k != "mean"]
            if all(x is None or x != x for x in per):
                cells.append("n/a")
                continue
            cells.append(f"{series[n]['mean'][i]:.4f}; " + " ".join(fmt(x, 3) for x in per))
        print(f"| {step} | " + " | ".join(cells) + " |")
    print()


def alpha_traj(run: Path) -> None:
    p = one(run, "controls_alpha_traj.json")
    if not p:
        return
    r = load(p)
    print("### V3 alpha spread (max - min of sigmoid(log_alpha)) per layer over checkpoints")
    for row in r["checkpoints"]:
        print(
            f"- step {row['step']}: "
            + ", ".join(
                f"L{i} {s:.3f} (mean {np.mean(a):.3f}, max {np.max(a):.3f}, min {np.min(a):.3f})"
                for i, (s, a) in enumerate(zip(row["spread"], row["alpha"]))
            )
        )
    print()


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/experiments/cdm")
    for name in ("code", "code_seed1", "v3", "v3_nolbl"):
        run = root / name
        if not (run / "summary.json").is_file():
            print(f"## {name}: no finished run\n")
            continue
        print(f"## {name}\n")
        for fn in (training, routing, controls_mi, gates, alphas, domains, trajectory, alpha_traj):
            try:
                fn(run)
            except Exception as e:  # noqa: BLE001 - a missing piece should not hide the rest
                print(f"({fn.__name__}: {type(e).__name__}: {e})\n")


if __name__ == "__main__":
    main()
