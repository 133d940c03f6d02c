"""Hugging Face tokenizers trained in the test itself (no hub): the kinds whose decoding differs from memlab's."""

from __future__ import annotations

import pytest

from memlab.data.tokenizer import HFTokenizer


def metaspace_tokenizer(*texts: str) -> HFTokenizer:
    """A SentencePiece-style BPE (a "▁" meta-space before words, as Llama's and T5's) trained on
    ``texts``, as a fast HF tokenizer."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False)
    tok.train_from_iterator([*texts, "The value is 42 and the key is k7.\n"] * 20, trainer=trainer)
    return HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=tok), "metaspace")
