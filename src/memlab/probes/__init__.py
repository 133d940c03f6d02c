"""What a trained model stores in its memory slots (``memlab probe``).

::

    from memlab.probes import ProbeOptions, run_probe
    run_probe("runs/cdm_code", "routing", options=ProbeOptions(corpus="stdlib-code"))

- ``routing``: slot-assignment histograms; MI(slot; Python nesting depth), bias-corrected,
  against shuffled labels with a permutation p-value; the slots that dominate each depth
- ``gates``: mean write gate per syntactic role and slot; the trigger tokens of each slot
- ``alphas``: the decay gate of every slot and layer; fast and slow slots
- ``domains``: slot-usage profiles of several corpora and their cosine similarities
- ``trajectory``: the routing probe over every checkpoint of a run

Each writes ``<name>_probe_step<N>.json`` (the results-file schema of :mod:`memlab.eval.schema`;
N: the checkpoint's step, the newest one's for ``trajectory``) and, where it has something to draw,
``<name>_probe_step<N>.png`` (named in the results' ``figures``).  Any mixer that exposes
``slot_activity()`` can be probed (the CDM mixers do), in a model that applies it once per forward.
"""

from __future__ import annotations

from pathlib import Path

from memlab.probes.options import PROBES, ProbeOptions


def run_probe(
    checkpoint: str | Path, probe: str, out_dir: str | Path | None = None, options: ProbeOptions | None = None
) -> Path:
    """Run ``probe`` on a run, checkpoint or model directory; returns the JSON file written."""
    from memlab.probes.runner import run_probe as run  # torch loads on use, not on import

    return run(checkpoint, probe, out_dir, options)


__all__ = ["PROBES", "ProbeOptions", "run_probe"]
