# ruff: noqa: E501
"""Copy the small results of run.sh into experiments/cdm_source/results/ (compact versions of the large ones).

.venv/bin/python experiments/cdm_source/collect.py [RUN ...]   # after run.sh; from the repo root
RUN: code, v3, code_seed1, v3_nolbl (default: all four).  Every file that run.sh writes for a run is
required: a run (or one of its outputs) that is missing stops the script with the run.sh command that
makes it.  Probe outputs are found by the step of the run's last checkpoint (the one run.sh probes).
"""

import json
import re
import shutil
import sys
from pathlib import Path

R = Path("runs/experiments/cdm")
O = Path("experiments/cdm_source/results")

# what run.sh writes under runs/experiments/cdm/<run>/probes ({step}: the last checkpoint's step)
CONTROLS = {
    "code": ("controls_mi", "controls_val", "controls_domains"),
    "v3": ("controls_alpha_traj", "controls_val", "controls_domains", "controls_mi"),
    "code_seed1": ("controls_mi",),
    "v3_nolbl": ("controls_alpha_traj", "controls_domains"),
}
PROBES = {
    "code": ("routing", "gates", "alphas", "domains"),
    "v3": ("alphas", "gates", "domains", "routing"),
    "code_seed1": ("routing", "alphas"),
    "v3_nolbl": ("alphas",),
}
FIGURES = {"code": ("routing", "trajectory"), "v3": ("alphas",)}  # copied as <run>_<probe>[_step<N>].png


def fail(msg: str) -> None:
    print(f"collect.py: {msg}", file=sys.stderr)
    sys.exit(2)


def need(path: Path, run: str) -> Path:
    if not path.is_file():
        fail(f"{path} is missing; run `bash experiments/cdm_source/run.sh {run}` first")
    return path


def last_step(run: str) -> int:
    """The step of the newest checkpoints/step_N (by N), as run.sh's last_ckpt picks it."""
    steps = [
        int(m.group(1)) for p in (R / run / "checkpoints").glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name))
    ]
    if not steps:
        fail(f"{R / run}/checkpoints/step_* not found; run `bash experiments/cdm_source/run.sh {run}` first")
    return max(steps)


def rounded(x, nd=5):
    """Floats rounded to nd decimals, recursively (keeps the files small)."""
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, list):
        return [rounded(v, nd) for v in x]
    if isinstance(x, dict):
        return {k: rounded(v, nd) for k, v in x.items()}
    return x


def cp(src: Path, dst: str) -> None:
    """Copy a JSON file with rounded floats and without the (repeated) model config of its metadata."""
    doc = json.loads(src.read_text())
    if isinstance(doc.get("metadata"), dict):
        doc["metadata"].pop("config", None)
    (O / dst).write_text(json.dumps(rounded(doc), indent=0))


def routing_compact(src: Path, dst: str) -> None:
    """The routing probe without its P(slot | depth) tables and slot_mean_routing lists."""
    doc = json.loads(src.read_text())
    for layer in doc["results"]["layers"]:
        for k in ("indent", "bracket"):
            layer[k].pop("slot_given_depth", None)
        layer.pop("slot_mean_routing", None)
    doc["metadata"].pop("config", None)
    (O / dst).write_text(json.dumps(rounded(doc), indent=0))


def trajectory_compact(src: Path, dst: str) -> None:
    res = json.loads(src.read_text())["results"]
    compact = {
        "steps": res["steps"],
        "corpus": res["corpus"],
        "tokens": res["tokens"],
        "series": res["series"],
        "summary_per_step": [{"step": r["step"], **r["summary"]} for r in res["checkpoints"]],
    }
    (O / dst).write_text(json.dumps(rounded(compact), indent=0))


def gates_compact(src: Path, dst: str) -> None:
    doc = json.loads(src.read_text())["results"]
    compact = {
        "corpus": doc["corpus"],
        "tokens": doc["tokens"],
        "roles": doc["roles"],
        "tokens_per_role": doc["tokens_per_role"],
        "layers": [
            {
                "layer": L["layer"],
                "role_by_slot_mean_gate": [[round(x, 4) for x in row] for row in L["role_by_slot_mean_gate"]],
                "slots": [
                    {k: s[k] for k in ("slot", "mean_gate", "favoured_role", "favoured_role_mean_gate")}
                    | {"triggers": [t["token"] for t in s["triggers"][:4]]}
                    for s in L["slots"]
                ],
            }
            for L in doc["layers"]
        ],
    }
    (O / dst).write_text(json.dumps(compact))


def domains_compact(src: Path, dst: str) -> None:
    doc = json.loads(src.read_text())["results"]
    keys = ("domains", "tokens", "similarity", "pairs", "mean_cross_domain_similarity")
    (O / dst).write_text(json.dumps({k: doc[k] for k in keys} | {"layers": doc["layers"]}, indent=0))


COMPACT = {  # probe -> (how it is copied, the name in results/)
    "alphas": (cp, "{run}_alphas_probe_step{step}.json"),
    "routing": (routing_compact, "{run}_routing_probe_step{step}_compact.json"),
    "gates": (gates_compact, "{run}_gates_compact.json"),
    "domains": (domains_compact, "{run}_domains_probe_compact.json"),
}


def plan(run: str) -> list:
    """(copy, source, name in results/) for every output of run.sh's `run`; stops if one is missing."""
    d = R / run
    if not d.is_dir():
        fail(f"{d} not found; run `bash experiments/cdm_source/run.sh {run}` first")
    probes, step = d / "probes", last_step(run)
    jobs = [(cp, need(d / "summary.json", run), f"{run}_train_summary.json")]
    jobs += [(cp, need(probes / f"{f}.json", run), f"{run}_{f}.json") for f in CONTROLS[run]]
    for p in PROBES[run]:
        how, name = COMPACT[p]
        jobs.append((how, need(probes / f"{p}_probe_step{step}.json", run), name.format(run=run, step=step)))
    trajectory = need(probes / f"trajectory_probe_step{step}.json", run)
    jobs.append((trajectory_compact, trajectory, f"{run}_trajectory_compact.json"))
    for p in FIGURES.get(run, ()):
        src = probes / f"{p}_probe_step{step}.png"
        name = f"{run}_trajectory.png" if p == "trajectory" else f"{run}_{p}_step{step}.png"
        jobs.append((copy, need(src, run), name))
    if run == "v3_nolbl":  # its last step writes the paired comparison into the v3 run
        src = need(R / "v3/probes/controls_paired_val_lbl_vs_nolbl.json", run)
        jobs.append((cp, src, "v3_controls_paired_val_lbl_vs_nolbl.json"))
    return jobs


def copy(src: Path, dst: str) -> None:
    shutil.copy(src, O / dst)


def main() -> None:
    runs = sys.argv[1:] or list(CONTROLS)
    for run in runs:
        if run not in CONTROLS:
            fail(f"unknown run {run!r}; valid choices: {', '.join(CONTROLS)}")
    jobs = [job for run in runs for job in plan(run)]  # every source checked before anything is written
    jobs.append((copy, need(R / "logs/steps.log", runs[0]), "steps.log"))
    O.mkdir(parents=True, exist_ok=True)
    for how, src, name in jobs:
        how(src, name)
    print("json bytes", sum(f.stat().st_size for f in O.glob("*.json")))
    for f in sorted(O.iterdir()):
        print(f.stat().st_size, f.name)


if __name__ == "__main__":
    main()
