"""The results files: one JSON document per suite, with a shared metadata block.

A document is ``{"schema_version", "suite", "metadata", "results"}``; ``results`` is the
suite's payload (for ``all``: one payload per suite, by name).  The layout is documented
in ``docs/results_schema.md``; :func:`validate` checks a document against it and
:func:`read_results` refuses files written by a newer schema.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from memlab.errors import MemlabError
from memlab.jsonfile import finite, write_json
from memlab.paths import weights_sha256
from memlab.provenance import provenance

# 2: lm's interval resamples documents (documents, tokens_from, ci95_note); longctx and ablation record
# their chance level, draw distinct examples, and the niah distractors are facts of other people;
# 3: lm's windows are spread over the split (tokens_from "spread", was the prefix); the algorithmic
# summary keeps per-example outcomes and the examples' hash (outcomes, examples_sha256)
SCHEMA_VERSION = 3

METADATA_FIELDS = (
    "memlab_version",  # the package version that wrote the file
    "git_commit",  # commit of the git checkout memlab's source is tracked in, else null
    "checkpoint",  # the path given on the command line
    "model_dir",  # the resolved directory holding the weights
    "config",  # the model's full ModelConfig as a dict
    "model",  # variant, size, params, non_embedding_params, layer_pattern, state_bytes
    "tokenizer_hash",
    "seed",
    "decoding",  # how answers are decoded (greedy exact match)
    "grid_version",  # version of the task grids the examples were drawn from
    "options",  # every evaluation option, as given
    "device",
    "torch_version",
    "timestamp",  # UTC, ISO 8601
)

OPTIONAL_METADATA_FIELDS = ("weights_sha256", "git_dirty", "python_version")  # files of an older memlab lack them

ACCURACY_FIELDS = ("accuracy", "correct", "n", "ci95")
OUTCOME_FIELDS = ("outcomes", "examples_sha256")  # the algorithmic summary's records (an older memlab's lack them)
DELTA_FIELDS = ("delta", "ci95", "n")

# The keys every payload of a suite must hold (nested records are described in the docs).
SUITE_FIELDS: dict[str, tuple[str, ...]] = {
    "algorithmic": ("grids", "tasks", "summary"),
    "longctx": ("tasks", "context_lengths", "depths", "overall"),
    "lm": ("corpus", "context_len", "tokens", "loss", "perplexity", "loss_ci95", "tokens_per_s"),
    "ablation": ("task", "context_len", "memory_layers", "normal", "zeroed", "delta", "per_layer", "horizon"),
    "selftest": ("checks", "passed"),
}


def results_filename(suite: str) -> str:
    return f"results_{suite}.json"


def metadata(
    model: Any,
    tokenizer: Any,
    options: Any,
    checkpoint: str,
    model_dir: str,
    weights: str | None,
    decoding: dict[str, Any] | None,
    grid_version: str | None,
    **model_facts: Any,
) -> dict[str, Any]:
    """The metadata block every results file carries (see ``docs/results_schema.md``).

    ``options`` is the dataclass of the command's options; ``weights`` the sha256 of the weights
    measured (None: of those in ``model_dir`` now); ``model_facts`` join the model's entry.
    """
    config = model.config
    return {
        **provenance(),
        "checkpoint": checkpoint,
        "model_dir": model_dir,
        "config": config.to_dict(),
        "model": {
            "variant": config.variant,
            "size": config.size,
            "params": model.num_params(),
            "non_embedding_params": model.num_params(non_embedding=True),
            "layer_pattern": config.pattern,
            **model_facts,
        },
        "weights_sha256": weights or weights_sha256(model_dir),  # which weights: a best_model may be saved again
        "tokenizer_hash": tokenizer.hash,
        "seed": options.seed,
        "decoding": decoding,
        "grid_version": grid_version,
        "options": asdict(options),
        "device": str(next(model.parameters()).device),
    }


def document(suite: str, metadata: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """A results document; non-finite floats become null so that the file is strict JSON."""
    return finite({"schema_version": SCHEMA_VERSION, "suite": suite, "metadata": metadata, "results": results})


def write_results(path: str | Path, doc: dict[str, Any]) -> Path:
    """Validate ``doc`` and write it atomically (temporary file, then rename)."""
    validate(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, doc)
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """Load and validate a results file; a missing, corrupt or newer-schema file is a MemlabError."""
    path = Path(path)
    if not path.is_file():
        raise MemlabError(f"no results file {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MemlabError(f"corrupt results file {path}: {e}") from None
    try:
        validate(doc)
    except MemlabError as e:
        raise MemlabError(f"{path}: {e}") from None
    return doc


def validate(doc: Any) -> None:
    """Raise a MemlabError unless ``doc`` follows the documented schema (this version or older)."""
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise MemlabError("not a memlab results document (no schema_version)")
    version = doc["schema_version"]
    if not isinstance(version, int) or version < 1:
        raise MemlabError(f"invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise MemlabError(
            f"results schema_version {version} is newer than this memlab supports ({SCHEMA_VERSION}); upgrade memlab"
        )
    _require(doc, ("suite", "metadata", "results"), "document")
    _require(doc["metadata"], METADATA_FIELDS, "metadata")
    suite, results = doc["suite"], doc["results"]
    payloads = results if suite == "all" else {suite: results}
    for name, payload in payloads.items():  # suites registered elsewhere (lm-eval) only need an object
        _require(payload, SUITE_FIELDS.get(name, ()), f"{name} results")


def _require(obj: Any, fields: tuple[str, ...], what: str) -> None:
    if not isinstance(obj, dict):
        raise MemlabError(f"{what} is not an object")
    missing = [f for f in fields if f not in obj]
    if missing:
        raise MemlabError(f"{what} lacks the fields {missing}")


