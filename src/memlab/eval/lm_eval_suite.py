"""Suite ``lm-eval``: EleutherAI lm-evaluation-harness tasks on a memlab model.

``memlab eval --suite lm-eval --tasks lambada_openai,hellaswag --checkpoint DIR`` runs the
named tasks (or task YAML files) through :class:`memlab.eval.lm_eval_adapter.MemlabLM`,
with ``--samples`` examples per task (lm-eval's ``limit``).  Task data comes from wherever
lm-eval finds it (the Hugging Face cache, or local files a task YAML names).  Every metric is
reported with lm-eval's standard error, its 95% interval (Wilson for the 0/1 metrics of
:data:`BINARY_METRICS`, value +- 1.96 stderr for the others) and the sample count.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from memlab.errors import MemlabError
from memlab.eval.hub import EvalContext, register_suite
from memlab.eval.stats import wilson_interval

log = logging.getLogger(__name__)
BINARY_METRICS = ("acc", "acc_norm", "exact_match")  # means of per-example 0/1 outcomes
INSTALL_HINT = "the lm-eval suite needs EleutherAI's lm-evaluation-harness: pip install 'memlab[lm-eval]'"


def require_lm_eval():
    """Import ``lm_eval`` or raise a MemlabError naming the extra to install."""
    try:
        import lm_eval
    except ImportError:
        raise MemlabError(INSTALL_HINT) from None
    return lm_eval


def task_manager(tasks: list[str]):
    """lm-eval's task index: only the task files' folders when every task is a YAML path, else everything."""
    from lm_eval.tasks import TaskManager

    paths = [Path(t) for t in tasks if t.endswith((".yaml", ".yml"))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MemlabError(f"lm-eval task file(s) not found: {', '.join(missing)}")
    folders = sorted({str(p.resolve().parent) for p in paths})
    return TaskManager(include_path=folders or None, include_defaults=len(paths) < len(tasks))


@register_suite("lm-eval")
def run(ctx: EvalContext) -> dict[str, Any]:
    lm_eval = require_lm_eval()
    from memlab.eval.lm_eval_adapter import MemlabLM

    options = ctx.options
    tasks = [name for item in options.tasks or [] for name in item.split(",") if name]  # "a,b" or "a b"
    if not tasks:
        raise MemlabError("the lm-eval suite needs --tasks (lm-eval task names or task YAML files)")
    manager = task_manager(tasks)
    unknown = [t for t in tasks if not t.endswith((".yaml", ".yml")) and t not in manager.all_tasks]
    if unknown:
        raise MemlabError(f"unknown lm-eval task(s) {unknown}; list them with: lm-eval ls tasks")
    lm = MemlabLM(model=ctx.model, tokenizer=ctx.tokenizer, batch_tokens=options.batch_tokens)
    try:
        out = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, limit=options.samples, task_manager=manager,
            random_seed=options.seed, numpy_random_seed=options.seed, torch_random_seed=options.seed,
            fewshot_random_seed=options.seed, log_samples=False,
        )
    except (ConnectionError, FileNotFoundError) as e:  # task data neither cached nor reachable
        raise MemlabError(
            f"lm-eval could not load the data of {', '.join(tasks)} ({str(e).splitlines()[0]}); it comes from the "
            "Hugging Face Hub (online once, then cached) or from local files named in a task YAML"
        ) from None
    counts = out["n-samples"]
    return {
        "tasks": {name: _task_record(metrics, counts.get(name, {})) for name, metrics in out["results"].items()},
        "lm_eval_version": lm_eval.__version__,
        "limit": options.samples,
        "task_versions": out.get("versions", {}),
        "n_shot": out.get("n-shot", {}),
    }


def _task_record(metrics: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    """``{"n", "metrics": {name: {"value", "stderr", "ci95", "n"}}}`` from lm-eval's ``metric,filter`` keys
    (named ``metric`` under the filter ``none``, else ``metric,filter``)."""
    record: dict[str, Any] = {}
    n = counts.get("effective")
    for key, value in metrics.items():
        name, _, _filter = key.partition(",")
        if name.endswith("_stderr") or name == "sample_len" or not isinstance(value, (int, float)):
            continue  # (sample_len: lm-eval's count of a task's documents, left out of its own tables too)
        stderr = metrics.get(f"{name}_stderr,{_filter}" if _filter else f"{name}_stderr")
        stderr = stderr if isinstance(stderr, (int, float)) else None
        if name in BINARY_METRICS and n:
            ci = list(wilson_interval(round(value * n), n))
        else:
            ci = [value - 1.96 * stderr, value + 1.96 * stderr] if stderr is not None else None
        label = name if _filter in ("", "none") else key  # gsm8k's strict-match and flexible-extract, both
        record[label] = {"value": value, "stderr": stderr, "ci95": ci, "n": n}
    return {"n": n, "metrics": record}
