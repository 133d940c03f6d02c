"""Data: tokenizers, corpora as token shards, procedural tasks and the training stream.

- :mod:`memlab.data.tokenizer`  byte / BPE / local Hugging Face tokenizers with a content hash
- :mod:`memlab.data.sources`    corpus sources (stdlib-code, stdlib-docs, hf:NAME[:SPLIT], files:GLOB)
- :mod:`memlab.data.text`       ``prepare_shards``: a source tokenised once into memmapped shards
- :mod:`memlab.data.shards`     the shard format and ``TokenShards`` (random / sequential windows)
- :mod:`memlab.data.tasks`      algorithmic and retrieval tasks, answer-only masks, exact match
- :mod:`memlab.data.curriculum` ``Curriculum``: the batches a trainer draws, resumable

``data`` depends on nothing of memlab's but ``memlab.errors``; importing this package is cheap
(submodules load on use).
"""
