"""The run's data: a cache directory named by the resolved data, --data-dir shards verified, and a
train split shorter than one window refused at start-up."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import records, tiny_config

from memlab.data.shards import HEADER_FILE, data_checksum, read_header
from memlab.data.text import prepare_shards
from memlab.errors import MemlabError
from memlab.train import train
from memlab.train.data import _prepared, build_data, curriculum_config
from memlab.train.distributed import Dist


def test_the_cache_directory_names_the_resolved_data(tmp_path, monkeypatch):
    """The name had come from the spec alone: a changed corpus rebuilt, in place, the shards another run read."""
    monkeypatch.setenv("MEMLAB_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("first text " * 20)
    cfg = tiny_config(tmp_path / "run", steps=1, corpus=f"files:{corpus}/*.txt", tokenizer="byte")
    _, first, _ = _prepared(cfg, Dist())
    assert first.parent == tmp_path / "cache" / "data" and "corpus-.txt_byte_" in first.name
    before = data_checksum(read_header(first))
    assert _prepared(cfg, Dist())[1] == first  # the same request: the same directory, reused
    (corpus / "a.txt").write_text("other text, longer " * 20)
    assert _prepared(cfg, Dist())[1] != first
    cfg.val_fraction = 0.5
    assert _prepared(cfg, Dist())[1] != first
    assert data_checksum(read_header(first)) == before  # the first run's shards are untouched


def test_a_corpus_field_is_chosen_by_text_field(tmp_path, monkeypatch):
    """The refusal of a row without a known text field had advised --text-field, which train lacked."""
    monkeypatch.setenv("MEMLAB_CACHE", str(tmp_path / "cache"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "body": f"body number {i}"}) + "\n" for i in range(4)))
    cfg = tiny_config(tmp_path / "run", steps=1, corpus=f"files:{rows}", tokenizer="byte", val_fraction=0.0)
    with pytest.raises(MemlabError, match="pass --text-field, one of: id, body"):
        _prepared(cfg, Dist())
    cfg.text_field = "body"
    tokenizer, data, _ = _prepared(cfg, Dist())
    assert read_header(data)["splits"]["train"]["documents"] == 4
    cfg.text_field, cfg.corpus, cfg.data_dir = "title", None, str(data)  # shards of another field
    with pytest.raises(MemlabError, match="were not prepared from text field 'title'"):
        _prepared(cfg, Dist())
    cfg.text_field = "body"
    assert _prepared(cfg, Dist())[1] == data
    cfg.corpus, cfg.data_dir = "none", None
    with pytest.raises(MemlabError, match="--corpus none trains on tasks only; drop --text_field"):
        _prepared(cfg, Dist())


def test_data_dir_shards_are_checksum_verified(tmp_path, text_corpus):
    data = tmp_path / "data"
    prepare_shards(text_corpus, "byte", data, val_fraction=0.2)
    cfg = tiny_config(tmp_path / "run", steps=1, corpus=None, data_dir=str(data))
    build_data(cfg, Dist(), None)
    shard = data / read_header(data)["splits"]["val"]["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[0] ^= 1  # same size: only the checksum sees it
    shard.write_bytes(bytes(raw))
    with pytest.raises(MemlabError, match="val_000.bin fails its sha256 checksum"):
        build_data(cfg, Dist(), None)


def test_a_train_split_shorter_than_one_window_is_refused_at_start_up(tmp_path):
    """It had failed only at the first language batch, deep in training."""
    (tmp_path / "doc.txt").write_text("twenty bytes of text")
    data = tmp_path / "data"
    prepare_shards(f"files:{tmp_path}/doc.txt", "byte", data, val_fraction=0.0)
    cfg = tiny_config(tmp_path / "run", steps=2, corpus=None, data_dir=str(data), seq_len=48)
    build_data(cfg, Dist(), None)  # tasks only: no window of text is needed
    cfg.alg_tokens = cfg.total_tokens // 2
    with pytest.raises(MemlabError, match=f"the train split of {data} has 21 tokens, fewer than one window of 49"):
        build_data(cfg, Dist(), None)
    assert (data / HEADER_FILE).is_file()


def sentences(corpus, sentence: str, repeats: int, documents: int = 8):
    """A directory of ``documents`` text files, file i ``sentence`` (formatted with i) repeated ``repeats`` times."""
    corpus.mkdir()
    for i in range(documents):
        (corpus / f"doc{i}.txt").write_text(sentence.format(i) * repeats)
    return corpus


def test_a_validation_split_shorter_than_a_window_is_warned_of_as_it_is(tmp_path, caplog):
    """Without tasks the warning had said "validation uses the tasks": there were none."""
    corpus = sentences(tmp_path / "corpus", "Document number {}. ", repeats=40)
    data = tmp_path / "data"
    prepare_shards(f"files:{corpus}/*.txt", "byte", data, val_fraction=0.2)
    splits = read_header(data)["splits"]
    seq_len = splits["val"]["tokens"]  # one token short of a validation window; the train split holds more
    assert 0 < seq_len < splits["train"]["tokens"] - 1
    for tasks, said in ((["copy"], True), ([], False)):
        caplog.clear()
        cfg = tiny_config(tmp_path / "run", steps=1, corpus=None, data_dir=str(data), alg_tasks=tasks, alg_tokens=0,
                          seq_len=seq_len)
        assert build_data(cfg, Dist(), None).val is None
        assert "is shorter than one window: no validation loss is measured" in caplog.text
        assert ("validation uses the tasks" in caplog.text) == said


def test_a_resume_refuses_data_prepared_again_with_other_text(tmp_path):
    """The run's --data-dir rebuilt since would resume it on other documents and another held-out split."""
    corpus = sentences(tmp_path / "corpus", "Document {}. ", repeats=20)
    data = tmp_path / "data"
    prepare_shards(f"files:{corpus}/*.txt", "byte", data, val_fraction=0.25)
    run = tmp_path / "run"
    train(tiny_config(run, steps=2, corpus=None, data_dir=str(data)))
    (corpus / "doc0.txt").write_text("Other text. " * 30)
    prepare_shards(f"files:{corpus}/*.txt", "byte", data, val_fraction=0.25)
    with pytest.raises(MemlabError, match="no longer holds the data the run recorded"):
        train(tiny_config(run, steps=3, corpus=None, data_dir=str(data), resume=True))


def _kinds(run_dir) -> set[str]:
    return set().union(*(r["loss_by_kind"] for r in records(run_dir)))


def test_a_corpus_run_with_a_retrieval_ratio_trains_retrieval(tmp_path, text_corpus):
    """The ratio had not reached the curriculum: a run asked for half retrieval batches trained none."""
    data = tmp_path / "data"
    prepare_shards(text_corpus, "byte", data, val_fraction=0.2)
    cfg = tiny_config(tmp_path / "run", steps=6, corpus=None, data_dir=str(data), seq_len=64,
                      retrieval_tasks=["niah"], retrieval_ratio=0.5)  # fmt: skip
    cfg.alg_tokens = 0  # language phase only: text and niah
    assert curriculum_config(cfg, 1).retrieval_ratio == 0.5
    train(cfg)
    assert _kinds(cfg.run_dir) == {"lm", "retrieval"}


def test_tasks_only_with_replay_and_retrieval_filling_the_language_phase_trains(tmp_path):
    """--corpus none with replay 0.5 + retrieval 0.5 draws no text, but had been refused for want of a
    corpus (the check left the retrieval ratio out)."""
    cfg = tiny_config(tmp_path / "run", steps=6, seq_len=64, replay_fraction=0.5, retrieval_tasks=["niah"],
                      retrieval_ratio=0.5)  # fmt: skip
    cfg.alg_tokens = 0
    train(cfg.validate())
    assert _kinds(cfg.run_dir) == {"alg", "retrieval"}


def test_the_curriculum_draws_from_the_run_seed(tmp_path):
    """Its seed had been fixed at 0: runs with other --seed values trained on the same batches."""

    def first_batch(seed: int) -> torch.Tensor:
        cfg = tiny_config(tmp_path / "run", steps=2, seed=seed)
        return build_data(cfg, Dist(), None).curriculum.next_batch()[0]

    assert torch.equal(first_batch(0), first_batch(0)) and torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(0), first_batch(1))
