"""Shared helpers of the training tests: tiny, fast run configurations and a small text corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from memlab.train import TrainConfig

TINY_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128}
TASKS = ["copy", "parity", "addition"]


def tiny_config(out: Path, steps: int, **overrides) -> TrainConfig:
    """A run of ``steps`` optimizer steps of a 2-layer model on three tasks (no corpus unless given)."""
    seq_len, batch = overrides.pop("seq_len", 48), overrides.pop("batch_size", 4)
    tokens = steps * seq_len * batch * overrides.get("grad_accum", 1)
    values = dict(
        corpus="none", alg_tasks=list(TASKS), seq_len=seq_len, batch_size=batch, alg_tokens=tokens,
        total_tokens=tokens, model=dict(TINY_MODEL), eval_samples=8, eval_interval=0, log_interval=1,
        save_interval=0, warmup=2, lr=3e-3, progress=False, output_dir=str(out),
    )
    values.update(overrides)
    return TrainConfig(**values)


def cli_args(cfg: TrainConfig) -> list[str]:
    """The ``memlab train`` flags that reproduce ``cfg`` (the fields tiny_config sets)."""
    args = []
    for key, value in cfg.to_dict().items():
        if key == "model":
            for name, v in value.items():
                args += [f"--{name}", str(v)]
        elif isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no-{key}".replace("_", "-"))
        elif isinstance(value, list):
            args += [f"--{key}", *value] if value else []
        elif value is not None:
            args += [f"--{key}", str(value)]
    return args


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def curve(run_dir: Path) -> list[tuple]:
    """Everything a run logged except timings: what must be identical between two runs."""
    return [
        tuple(sorted((k, json.dumps(v)) for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")))
        for r in records(run_dir)
    ]


def poison_forward(monkeypatch, bad_calls: set[int]) -> None:
    """Make the listed training forward calls (1-based, counted over every run of the test) return a NaN loss."""
    from memlab.models.lm import LanguageModel

    forward, calls = LanguageModel.forward, {"n": 0}

    def poisoned(self, input_ids, state=None, labels=None):
        out = forward(self, input_ids, state, labels)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                return out * float("nan")
        return out

    monkeypatch.setattr(LanguageModel, "forward", poisoned)


def subprocess_env() -> dict[str, str]:
    """One thread per process, so that runs are fast on a shared CPU and numerically reproducible."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> str:
    """A ``files:`` corpus of 40 small documents (code and prose)."""
    d = tmp_path_factory.mktemp("train_corpus")
    for i in range(40):
        body = f"# document {i}\n" + f"def f_{i}(x):\n    return x * {i} + 1\n" * (i % 4 + 2)
        (d / f"doc_{i:02d}.txt").write_text(body + f"The key k{i} holds the value {i * 7 % 31}.\n" * 3)
    return f"files:{d}/*.txt"
