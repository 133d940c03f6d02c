"""Fixtures of the evaluation tests: a byte tokenizer, planted oracle models, a briefly trained model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from eval_planted import OracleMemory, train_briefly

from memlab.config import ModelConfig
from memlab.data.text import prepare_shards
from memlab.data.tokenizer import build_tokenizer
from memlab.eval.hub import EvalOptions, evaluate
from memlab.mixers import MIXERS, register_mixer
from memlab.models.lm import LanguageModel


@pytest.fixture(scope="session")
def byte_tok():
    return build_tokenizer("byte")


@pytest.fixture(scope="session")
def oracle_letter():
    """Register the oracle mixer for this test session (and remove it afterwards)."""
    register_mixer(OracleMemory)
    yield OracleMemory.letter
    MIXERS.pop(OracleMemory.letter, None)


@pytest.fixture
def planted_model(byte_tok, oracle_letter):
    def build(answer_fn: Callable[[str], str | None], max_seq_len: int = 1024, n_layers: int = 1) -> LanguageModel:
        """The oracle in the first layer; further layers are oracles that never answer (memory left unused)."""
        V = byte_tok.vocab_size
        D = V + V % 2
        config = ModelConfig(vocab_size=V, d_model=D, n_layers=n_layers, n_heads=1, d_ff=0, pos_encoding="none",
                             layer_pattern=oracle_letter * n_layers, max_seq_len=max_seq_len,
                             variant="planted_oracle")
        model = LanguageModel(config).eval()
        with torch.no_grad():
            model.embed.weight.copy_(torch.eye(V, D))
        for mixer in model.mixers:
            mixer.tokenizer = byte_tok
        model.mixers[0].answer_fn = answer_fn
        return model

    return build


@pytest.fixture(scope="session")
def trained_baseline(byte_tok):
    """A small baseline transformer trained for a few steps on copy (not solved: a mix of right and wrong)."""
    import memlab

    torch.manual_seed(0)
    model = memlab.build_model("baseline", "tiny", vocab_size=byte_tok.vocab_size, d_model=64, n_layers=2,
                               n_heads=2, d_ff=128, max_seq_len=1024)
    return train_briefly(model, byte_tok)


# the options of the 'all' evaluation below: every suite, small
SMALL = dict(
    samples=3, tasks=["copy", "parity", "addition"], context_lengths=[384, 448], depths=[0.0, 1.0], needle_samples=2,
    lm_tokens=1024, lm_context=64, ablation_context=96, ablation_samples=8, horizons=[8, 96], horizon_samples=4,
)


@pytest.fixture(scope="session")
def shards(tmp_path_factory, byte_tok):
    text_dir = tmp_path_factory.mktemp("text")
    for i in range(12):
        (text_dir / f"doc{i}.txt").write_text(f"Document {i}. copy: {i * 7919} " * 40)
    out = tmp_path_factory.mktemp("shards")
    prepare_shards(f"files:{text_dir}/*.txt", byte_tok, out, val_fraction=0.5)
    return out


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, trained_baseline, byte_tok, shards):
    """The trained model saved as a model directory with its tokenizer, evaluated with suite 'all'."""
    model_dir = tmp_path_factory.mktemp("model")
    trained_baseline.save(model_dir)
    byte_tok.save(model_dir)
    out = model_dir / "eval"
    doc = evaluate(model_dir, "all", out, EvalOptions(corpus=str(shards), **SMALL))
    return doc, out
