# ruff: noqa: E501
"""Copy small result files into experiments/cdm_source/results/ (compact versions of the large ones).

.venv/bin/python experiments/cdm_source/collect.py     # after run.sh; from the repo root
"""

import json
import shutil
from pathlib import Path

R = Path("runs/experiments/cdm")
O = Path("experiments/cdm_source/results")
O.mkdir(parents=True, exist_ok=True)


def rounded(x, nd=5):
    """Floats rounded to nd decimals, recursively (keeps the files small)."""
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, list):
        return [rounded(v, nd) for v in x]
    if isinstance(x, dict):
        return {k: rounded(v, nd) for k, v in x.items()}
    return x


def cp(src, dst):
    """Copy a JSON file with rounded floats and without the (repeated) model config of its metadata."""
    src = Path(src)
    if src.is_file():
        doc = json.loads(src.read_text())
        if isinstance(doc.get("metadata"), dict):
            doc["metadata"].pop("config", None)
        (O / dst).write_text(json.dumps(rounded(doc), indent=0))


for run, tag in (("code", "code"), ("v3", "v3"), ("code_seed1", "code_seed1"), ("v3_nolbl", "v3_nolbl")):
    d = R / run
    cp(d / "summary.json", f"{tag}_train_summary.json")
    for f in (
        "controls_mi",
        "controls_val",
        "controls_domains",
        "controls_alpha_traj",
        "controls_paired_val_lbl_vs_nolbl",
    ):
        cp(d / "probes" / f"{f}.json", f"{tag}_{f}.json")
    for f in sorted((d / "probes").glob("alphas_probe_step*.json")):
        cp(f, f"{tag}_{f.name}")
    # compact routing: drop P(slot|depth) tables and slot_mean_routing lists
    for f in sorted((d / "probes").glob("routing_probe_step*.json")):
        doc = json.loads(f.read_text())
        for layer in doc["results"]["layers"]:
            for k in ("indent", "bracket"):
                layer[k].pop("slot_given_depth", None)
            layer.pop("slot_mean_routing", None)
        doc["metadata"].pop("config", None)
        (O / f"{tag}_{f.stem}_compact.json").write_text(json.dumps(rounded(doc), indent=0))
    t = d / "probes" / "trajectory_probe.json"
    if t.is_file():
        doc = json.loads(t.read_text())
        res = doc["results"]
        compact = {
            "steps": res["steps"],
            "corpus": res["corpus"],
            "tokens": res["tokens"],
            "series": res["series"],
            "summary_per_step": [{"step": r["step"], **r["summary"]} for r in res["checkpoints"]],
        }
        (O / f"{tag}_trajectory_compact.json").write_text(json.dumps(rounded(compact), indent=0))
    g = sorted((d / "probes").glob("gates_probe_step*.json"))
    if g:
        doc = json.loads(g[-1].read_text())["results"]
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
                        {k: s[k] for k in ("slot", "mean_gate", "favoured_role", "peak_role_gate")}
                        | {"triggers": [t["token"] for t in s["triggers"][:4]]}
                        for s in L["slots"]
                    ],
                }
                for L in doc["layers"]
            ],
        }
        (O / f"{tag}_gates_compact.json").write_text(json.dumps(compact))
    dm = sorted((d / "probes").glob("domains_probe_step*.json"))
    if dm:
        doc = json.loads(dm[-1].read_text())["results"]
        (O / f"{tag}_domains_probe_compact.json").write_text(
            json.dumps(
                {k: doc[k] for k in ("domains", "tokens", "similarity", "pairs", "mean_cross_domain_similarity")}
                | {"layers": doc["layers"]},
                indent=0,
            )
        )
shutil.copy(R / "code/probes/routing_probe_step1293.png", O / "code_routing_step1293.png")
shutil.copy(R / "code/probes/trajectory_probe.png", O / "code_trajectory.png")
shutil.copy(R / "v3/probes/alphas_probe_step1006.png", O / "v3_alphas_step1006.png")
shutil.copy(R / "logs/steps.log", O / "steps.log")
shutil.copy(R / "throughput/summary.json", O / "throughput_measurement_summary.json")
tot = sum(f.stat().st_size for f in O.glob("*.json"))
print("json bytes", tot)
[print(f.stat().st_size, f.name) for f in sorted(O.iterdir())]
