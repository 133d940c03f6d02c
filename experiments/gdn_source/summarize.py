"""Summarise runs/experiments/gdn_source/expN into a markdown table (and copy the small result files).

Usage (repo root): .venv/bin/python experiments/gdn_source/summarize.py [--copy] [--runs DIR] [--to DIR]
--copy: copy each run's eval JSONs, summary.json and metrics.jsonl (the curriculum walk) and times.tsv
into --to (default experiments/gdn_source/results/).  --runs experiments/gdn_source/results: the tables
from the copies.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from memlab.eval.stats import pool

RUNS = Path("runs/experiments/gdn_source")
HERE = Path(__file__).parent
NAMES = {
    "1": "GDN-only, NIAH curriculum",
    "2": "Hybrid, language only",
    "3": "Hybrid + drop 0.7, NIAH curriculum",
    "3b": "control: hybrid, no drop, NIAH curriculum",
    "4": "Hybrid + drop 0.7, mixed LM + NIAH",
}
BUCKETS = {"early": (0.0, 0.15, 0.3), "middle": (0.4, 0.5, 0.6), "late": (0.7, 0.85, 1.0)}


def load(path: Path) -> dict | None:
    return json.loads(path.read_text())["results"] if path.is_file() else None


def pct(r: dict | None) -> str:
    if not r or r.get("accuracy") is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{100 * r['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={r['n']})"


def delta(d: dict | None) -> str:
    if not d or d.get("delta") is None:
        return "-"
    lo, hi = d["ci95"]
    return f"{100 * d['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def times(runs: Path) -> dict[str, int]:
    path = runs / "times.tsv"
    out: dict[str, int] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, sec = line.split("\t")
            out[name] = int(sec)
    return out


def curriculum_walk(path: Path) -> str:
    """The NIAH difficulty levels and the steps they were reached at, from a run's metrics.jsonl."""
    if not path.is_file():
        return "- (no metrics.jsonl)"
    levels: list[tuple[int, int]] = []
    for line in path.read_text().splitlines():
        d = json.loads(line).get("difficulty", {})
        level = next((v for task, v in d.items() if task.split(":")[0] == "niah"), None)  # niah, niah:distractors=sky
        if level is not None and (not levels or levels[-1][1] != level):
            levels.append((json.loads(line)["step"], level))
    return ", ".join(f"{lvl}@{s}" for s, lvl in levels) or "-"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--copy", action="store_true", help="copy the small result files into --to")
    p.add_argument("--runs", type=Path, default=RUNS, help="where the expN directories are (default: %(default)s)")
    p.add_argument("--to", type=Path, default=HERE / "results", help="where --copy copies to (default: %(default)s)")
    opts = p.parse_args()
    runs = opts.runs
    t = times(runs)
    rows, pos_rows, train_rows, layer_rows, colour_rows = [], [], [], [], []
    for n, name in NAMES.items():
        run = runs / f"exp{n}"
        if not run.is_dir():
            continue
        ab, ab0 = load(run / "eval/results_ablation.json"), load(run / "eval_start/results_ablation.json")
        lc, lm = load(run / "eval/results_longctx.json"), load(run / "eval/results_lm.json")
        ppl = "-"
        if lm:
            lo, hi = lm["perplexity_ci95"]
            ppl = f"{lm['perplexity']:.2f} [{lo:.2f}, {hi:.2f}]"
        rows.append(
            f"| {n} | {name} | {pct(ab and ab['normal'])} | {pct(ab and ab['zeroed'])} | {delta(ab and ab['delta'])} "
            f"| {pct(ab0 and ab0['normal'])} | {delta(ab0 and ab0['delta'])} | {ppl} |"
        )
        cc_path = run / "eval/colour_choice.json"
        if cc_path.is_file():
            cc = json.loads(cc_path.read_text())
            by = " | ".join(pct(cc["normal_by_bucket"][b]) for b in ("early", "middle", "late"))
            colour_rows.append(
                f"| {n} | {name} | {pct(cc['normal'])} | {pct(cc['zeroed'])} | {delta(cc['delta'])} | {by} |"
            )
        if ab:
            per = ", ".join(
                f"{p['mixer']}@{p['layer']}: {100 * p['zeroed']['accuracy']:.0f}% ({delta(p['delta'])})"
                for p in ab["per_layer"]
            )
            layer_rows.append(f"| {n} | {per} |")
        if lc:
            (task,) = lc["tasks"].values()  # the one NIAH task run.sh evaluates (niah, or niah:distractors=sky)
            cells = task["cells"]
            by = {b: pool([c for c in cells if round(c["depth"], 2) in ds]) for b, ds in BUCKETS.items()}
            pos_rows.append(
                f"| {n} | {name} | " + " | ".join(pct(by[b]) for b in BUCKETS) + f" | {pct(lc['overall'])} |"
            )
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        walk = curriculum_walk(run / "metrics.jsonl")
        wall = " / ".join(
            f"{t.get(f'exp{n}_{k}', '-')}" for k in ("train", "ablation", "ablation_start", "longctx", "colour", "lm")
        )
        train_rows.append(
            f"| {n} | {summary.get('steps', '-')} | {summary.get('tokens_seen', '-')} | {walk} | {wall} |"
        )
    print(
        "| # | experiment | acc. normal (random pos.) | acc. zeroed | Delta (pts) [95% CI] | acc. normal (fact at start) "
        "| Delta, fact at start | val. PPL [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| # | experiment | early (depth 0-0.3) | middle (0.4-0.6) | late (0.7-1.0) | all |")
    print("|---|---|---|---|---|---|")
    print("\n".join(pos_rows))
    print("\n| # | experiment | colour choice normal | zeroed | Delta (pts) | normal: early | middle | late |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(colour_rows))
    print("\n| # | one memory layer zeroed at a time: accuracy (Delta) |")
    print("|---|---|")
    print("\n".join(layer_rows))
    print(
        "\n| # | steps | tokens | curriculum walk (distractors@step) | wall s: train / ablation / ablation-start / longctx / colour / lm |"
    )
    print("|---|---|---|---|---|")
    print("\n".join(train_rows))
    if opts.copy:
        dest = opts.to
        for n in NAMES:
            for sub in ("eval", "eval_start"):
                for f in [
                    *(runs / f"exp{n}" / sub).glob("results_*.json"),
                    *(runs / f"exp{n}" / sub).glob("colour_*.json"),
                ]:
                    target = dest / f"exp{n}" / sub / f.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(f, target)
            for f in ("summary.json", "metrics.jsonl"):
                if (runs / f"exp{n}" / f).is_file():
                    (dest / f"exp{n}").mkdir(parents=True, exist_ok=True)
                    shutil.copy(runs / f"exp{n}" / f, dest / f"exp{n}" / f)
        if (runs / "times.tsv").is_file():
            shutil.copy(runs / "times.tsv", dest / "times.tsv")


if __name__ == "__main__":
    main()
