"""``report.md`` of a study: setup, comparison table, verdicts, memory ablation, plots, runs."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from memlab.analysis.compare import Comparison, criteria_markdown, markdown
from memlab.eval.hub import delta_points
from memlab.jsonfile import read_json_object, write_text
from memlab.markdown import markdown_table


def _pct(record: dict[str, Any] | None) -> str:
    if not record or record.get("accuracy") is None:
        return "-"
    lo, hi = record["ci95"]
    return f"{100 * record['accuracy']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def _seconds(record: dict[str, Any], key: str) -> str:
    return f"{record[key]:.0f}" if key in record else "-"


def _trained_by(run_dir: Path) -> str:
    """The code and device that finished a run's training (its summary.json); - where not recorded."""
    path = run_dir / "summary.json"
    summary = read_json_object(path) if path.is_file() else {}
    meta = summary.get("metadata") if isinstance(summary.get("metadata"), dict) else {}
    commit, version = meta.get("git_commit"), meta.get("memlab_version")
    if isinstance(commit, str):
        code = commit[:10] + (" (uncommitted changes)" if meta.get("git_dirty") else "")
    else:  # (memlab run from an installed copy: its version alone)
        code = f"memlab {version}" if isinstance(version, str) else "-"
    setup = [str(summary[k]) for k in ("device", "precision") if isinstance(summary.get(k), str)]
    return ", ".join([code, *setup])


def ablation_markdown(comparison: Comparison) -> str:
    """The ablation table: one line per run (each seed of an aggregated row under its own name)."""
    cells = []
    for row in (member for r in comparison.rows for member in r.members or [r]):
        p = row.results.get("ablation")
        if p is None:
            continue
        sweep = ", ".join(f"{r['horizon']}: {_pct(r).split(' ')[0]}" for r in p["horizon"])
        cells.append([row.name, p["memory_layers"] or "none", _pct(p["normal"]), _pct(p["zeroed"]),
                      delta_points(p["delta"]), sweep])
    return markdown_table(
        ["run", "memory layers", "normal", "zeroed", "Delta (pts) [95% CI]", "horizon sweep (accuracy at h)"], cells
    )


def write_report(path: Path, plan: dict[str, Any], preset, comparison: Comparison, out: Path) -> Path:
    """Write the study's report.md (relative links to the plots and runs)."""
    from memlab import __version__
    from memlab.provenance import git_commit, utc_timestamp

    base = next(r for r in comparison.rows if r.name == comparison.baseline)
    rel = [Path(os.path.relpath(f, path.parent)).as_posix() for f in comparison.files if f.suffix == ".png"]
    compared = [member.name for r in comparison.rows for member in r.members or [r]]  # not runs of earlier plans
    first_ablation = next((r.results["ablation"] for r in comparison.rows if "ablation" in r.results), None)
    ablation_head = (
        f"On `{first_ablation['task']}` at {first_ablation['context_len']} tokens: every memory-carrying layer's "
        "read-out zeroed (Delta = normal - zeroed, Tango's paired interval), and every mixer limited to its "
        "last h tokens. Delta does not apply (n/a) to a model without memory-carrying layers.\n\n"
        if first_ablation else ""
    )
    sections = [
        f"# memlab study: `{plan['preset']}`\n",
        f"{preset.description}\n",
        "## Setup\n",
        f"- variants: {', '.join(f'`{v}`' for v in plan['variants'])} at size `{preset.size}`; "
        f"seeds {plan['seeds']}; baseline `{plan['baseline']}`",
        f"- training (every run the same): {', '.join(f'{k}={v}' for k, v in preset.train.items())}",
        f"- evaluation (the same examples for every model): {', '.join(f'{k}={v}' for k, v in preset.eval.items())}"
        + (f"; {plan['note']}" if plan.get("note") else ""),
        f"- report written on {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"by memlab {__version__} (commit {git_commit() or 'unknown'}) at {utc_timestamp()}; the code and device "
        "each run was trained with are in the Runs table",
        f"- this session of the study took {plan.get('session_s', 0):.0f} s\n",
        "## Comparison\n",
        "Accuracies in % with 95% intervals (Wilson over examples for one run; for several seeds, a t interval "
        "that adds the seeds' spread to the noise of the examples they share, clipped to the possible range); "
        "perplexity on the validation split of the training corpus; Delta "
        "is the memory ablation below (its seeds one by one); training time is the seconds of the training steps "
        "(evaluations and checkpoints left out).\n",
        markdown(comparison.rows, comparison.verdicts) + "\n",
        *([f"Left out, diverged (too many non-finite steps in a row; the variant has no verdict): "
           f"{', '.join(f'`{name}`' for name in plan['diverged'])}.\n"] if plan.get("diverged") else []),
        criteria_markdown(comparison.rows, comparison.verdicts, base, comparison.criteria) + "\n",
        "## Memory ablation\n",
        ablation_head + ablation_markdown(comparison) + "\n",
        "## Plots\n",
        *[f"![{Path(p).stem}]({p})\n" for p in rel],
        "## Runs\n",
        markdown_table(
            ["run", "train s", "eval s", "trained by (commit, device, precision)", "directory"],
            ([name, *(_seconds(plan["runs"].get(name, {}), key) for key in ("train_s", "eval_s")),
              _trained_by(out / "runs" / name), f"`{os.path.relpath(out / 'runs' / name, path.parent)}`"]
             for name in compared),
        ),
        "\n(seconds of training and evaluation, in whichever session did them; the commit of the session that "
        "finished the training; -: not recorded.)\n",
    ]
    write_text(path, "\n".join(sections))  # (a kill mid-write had left a truncated report that looked whole)
    return path
