"""Corpora -> token shards: sources, exact round trip, stable split, reuse, corruption, windows, HF offline."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from memlab.cli import main
from memlab.data import sources
from memlab.data.shards import HEADER_FILE, TokenShards, data_checksum, read_header
from memlab.data.sources import module_docstrings, open_source
from memlab.data.text import is_validation, prepare_shards
from memlab.data.tokenizer import build_tokenizer, load_tokenizer
from memlab.errors import MemlabError
from memlab.probes.corpus import read_probe_text


def stream(directory, split) -> np.ndarray:
    """All tokens of a split, shard after shard."""
    header = read_header(directory)
    return np.concatenate(
        [np.fromfile(directory / s["file"], dtype=header["dtype"]) for s in header["splits"][split]["shards"]]
    )


def split_documents(tokens: np.ndarray, tokenizer) -> list[str]:
    ends = np.flatnonzero(tokens == tokenizer.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(tokens[a:b].tolist()) for a, b in zip(starts, ends)]


# ------------------------------------------------------------------ sources


def test_files_source_reads_txt_and_jsonl_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("second file")
    (tmp_path / "a.jsonl").write_text('{"text": "row one"}\n\n{"text": "row two", "id": 2}\n')
    assert list(open_source(f"files:{tmp_path}/*").documents()) == ["row one", "row two", "second file"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    src = open_source(f"files:{tmp_path}/c.jsonl", text_field="body")
    assert list(src.documents()) == ["x"]
    with pytest.raises(MemlabError, match="none of the text fields"):
        list(open_source(f"files:{tmp_path}/c.jsonl").documents())


def test_jsonl_null_text_is_no_document_and_other_non_text_is_an_error(tmp_path, byte_tok):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": null}\n{"text": "two"}\n')
    assert list(open_source(f"files:{tmp_path}/a.jsonl").documents()) == ["one", "two"]
    header = prepare_shards(f"files:{tmp_path}/a.jsonl", byte_tok, tmp_path / "shards", val_fraction=0).header
    assert header["splits"]["train"]["documents"] == 2
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": 7}\n')
    with pytest.raises(MemlabError, match=r"b\.jsonl:2: field 'text' holds int, not text; pass --text-field$"):
        list(open_source(f"files:{tmp_path}/b.jsonl").documents())


def test_shards_are_not_written_where_the_source_reads(tmp_path, byte_tok):
    """Shards beside the text files: the next run had read shards.json as a document and failed."""
    (tmp_path / "a.txt").write_text("some text\n")
    for pattern in ("*", "*.txt", "**/*.txt"):
        with pytest.raises(MemlabError, match=f"files:{tmp_path}/{re.escape(pattern)} reads files in {tmp_path}, "):
            prepare_shards(f"files:{tmp_path}/{pattern}", byte_tok, tmp_path, val_fraction=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert prepare_shards(f"files:{tmp_path}/*.txt", byte_tok, tmp_path / "shards", val_fraction=0).header


def test_jsonl_with_a_byte_order_mark_and_a_cut_emoji_escape(tmp_path, byte_tok):
    """A BOM had been 'not a JSON object'; a lone surrogate from a cut escape had been a UnicodeEncodeError traceback."""
    (tmp_path / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "hello"}\n{"text": "broken \\ud83d end"}\n')
    assert list(open_source(f"files:{tmp_path}/a.jsonl").documents()) == ["hello", "broken \ufffd\ufffd\ufffd end"]
    assert prepare_shards(f"files:{tmp_path}/a.jsonl", byte_tok, tmp_path / "out", val_fraction=0).header
    with pytest.raises(MemlabError, match="shard_tokens must be positive"):  # 0 had looped for ever
        prepare_shards(f"files:{tmp_path}/a.jsonl", byte_tok, tmp_path / "out2", shard_tokens=0)


def test_files_source_reads_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["alpha", "beta"], "n": [1, 2]}), tmp_path / "d.parquet")
    assert list(open_source(f"files:{tmp_path}/*.parquet").documents()) == ["alpha", "beta"]
    pq.write_table(pa.table({"text": [["line a", "line b"], ["c"]]}), tmp_path / "lists.parquet")
    with pytest.raises(MemlabError, match="field 'text' holds list, not text"):  # had been an AttributeError
        list(open_source(f"files:{tmp_path}/lists.parquet").documents())


def test_text_is_the_first_field_tried_then_content(tmp_path):
    """TEXT_FIELDS is tried in its documented order: a row with both text and content gives its text."""
    (tmp_path / "both.jsonl").write_text('{"content": "c1", "text": "t1"}\n{"content": "c2", "text": "t2"}\n')
    assert list(open_source(f"files:{tmp_path}/both.jsonl").documents()) == ["t1", "t2"]
    (tmp_path / "content.jsonl").write_text('{"content": "c1", "story": "s1"}\n')
    assert list(open_source(f"files:{tmp_path}/content.jsonl").documents()) == ["c1"]


def test_files_parquet_reads_the_chosen_text_field(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"title": ["Title A", "Title B"], "text": ["body a", "body b"]}), tmp_path / "d.parquet")
    assert list(open_source(f"files:{tmp_path}/d.parquet").documents()) == ["body a", "body b"]
    assert list(open_source(f"files:{tmp_path}/d.parquet", text_field="title").documents()) == ["Title A", "Title B"]


def test_shards_of_another_text_field_are_not_reused(tmp_path, byte_tok):
    """The same file read through another field is another corpus: its shards are rebuilt, not reused."""
    (tmp_path / "rows.jsonl").write_text('{"a": "first alpha", "b": "first beta"}\n{"a": "second alpha", "b": "2b"}\n')
    spec, out = f"files:{tmp_path}/rows.jsonl", tmp_path / "out"
    prepare_shards(open_source(spec, text_field="a"), byte_tok, out, val_fraction=0)
    assert split_documents(stream(out, "train"), byte_tok) == ["first alpha", "second alpha"]
    again = prepare_shards(open_source(spec, text_field="b"), byte_tok, out, val_fraction=0)
    assert not again.reused
    assert split_documents(stream(out, "train"), byte_tok) == ["first beta", "2b"]
    assert prepare_shards(open_source(spec, text_field="b"), byte_tok, out, val_fraction=0).reused


def test_stdlib_docs_leave_out_the_test_suite(tmp_path, monkeypatch):
    """stdlib-code holds the test suite, stdlib-docs only the docstrings of the other modules."""
    (tmp_path / "test").mkdir()
    (tmp_path / "a.py").write_text('"""Docs of module a."""\n')
    (tmp_path / "test" / "test_a.py").write_text('"""Docs of the tests of a."""\n')
    monkeypatch.setattr(sources, "stdlib_root", lambda: tmp_path)
    monkeypatch.setattr(sources, "pydoc_topics", lambda: [])
    assert list(open_source("stdlib-docs").documents()) == ["Docs of module a."]
    assert list(open_source("stdlib-code").documents()) == ['"""Docs of module a."""\n', '"""Docs of the tests of a."""\n']


def test_stdlib_sources_are_real_code_and_prose():
    code = open_source("stdlib-code")
    first = next(iter(code.documents()))
    assert "import" in first or "def " in first
    assert code.fingerprint == open_source("stdlib-code").fingerprint
    docs = open_source("stdlib-docs").documents()
    prose = [next(docs) for _ in range(3)]
    assert all(len(p) > 50 and " the " in p for p in prose)


def test_a_stdlib_docstring_is_held_out_with_the_file_it_came_from(tmp_path, byte_tok, monkeypatch):
    """Docstrings had been split by their own text: the held-out prose of stdlib-docs was training code."""
    files = []
    for i in range(40):
        files.append(tmp_path / f"mod_{i:02d}.py")
        files[-1].write_text(f'"""Module {i} says {i * 7}."""\n\n\ndef f():\n    """Function of {i}."""\n    return {i}\n')
    monkeypatch.setattr(sources, "stdlib_files", lambda include_tests=True: files)
    monkeypatch.setattr(sources, "pydoc_topics", lambda: [])
    docs = {}
    for spec in ("stdlib-code", "stdlib-docs"):
        prepare_shards(spec, byte_tok, tmp_path / spec, val_fraction=0.5)
        docs[spec] = split_documents(stream(tmp_path / spec, "val"), byte_tok)
    held_out_files = [f for f in files if f.read_text() in docs["stdlib-code"]]
    assert 0 < len(held_out_files) < len(files)
    assert docs["stdlib-docs"] == [module_docstrings(f.read_text()) for f in held_out_files]
    probe = read_probe_text("stdlib-docs", byte_tok, 10_000, 64, val_fraction=0.5)
    assert probe.documents == len(held_out_files)


def test_files_undecodable_bytes_warn_and_a_byte_order_mark_is_no_text(tmp_path, caplog):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfhello")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 au lait")
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "bad \xff"}\n')
    with caplog.at_level("WARNING", logger="memlab.data.sources"):
        docs = list(open_source(f"files:{tmp_path}/*").documents())
    assert docs == ["hello", "caf\ufffd au lait", "ok", "bad \ufffd"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "b.txt is not valid UTF-8" in warnings[0] and "1 line(s)" in warnings[1]


def test_files_decompresses_and_refuses_binary_files(tmp_path):
    """A .jsonl.gz had been one document of gzip bytes, with only a warning."""
    import bz2
    import gzip
    import lzma

    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "gz row"}\n{"text": "second"}\n'))
    (tmp_path / "b.txt.bz2").write_bytes(bz2.compress("bz2 caf\u00e9".encode()))
    (tmp_path / "c.md.xz").write_bytes(lzma.compress(b"# xz"))
    assert list(open_source(f"files:{tmp_path}/*").documents()) == ["gz row", "second", "bz2 caf\u00e9", "# xz"]
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(b"cut short")[:-6])
    with pytest.raises(MemlabError, match=r"cannot read .*d.txt.gz: .* \(a corrupt or truncated compressed file\?\)"):
        list(open_source(f"files:{tmp_path}/d.txt.gz").documents())
    (tmp_path / "e.png").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(MemlabError, match=r"e.png does not read as text \(50% undecodable bytes\)"):
        list(open_source(f"files:{tmp_path}/e.png").documents())


def test_a_text_file_is_the_same_document_through_files_and_hf(tmp_path):
    """hf: had made CRLF line ends LF and kept a byte-order mark, files: the opposite: the same corpus
    named the other way split otherwise, and its "held-out" documents had been trained on."""
    import gzip

    pytest.importorskip("datasets")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [b"\xef\xbb\xbfmarked\r\nwindows\r\n", b"old mac\rline", b"caf\xe9 au lait, tr\xe8s bon", b"plain\nunix"]
    for i, raw in enumerate(texts):
        (corpus / f"{i}.txt").write_bytes(raw)
    (corpus / "4.txt.gz").write_bytes(gzip.compress(b"\xef\xbb\xbfgzipped\r\nmarked"))  # (datasets keeps its mark)
    by_files = list(open_source(f"files:{corpus}/*.txt*").documents())
    assert by_files == ["marked\nwindows\n", "old mac\nline", "caf\ufffd au lait, tr\ufffds bon", "plain\nunix",
                        "gzipped\nmarked"]
    assert sorted(open_source(f"hf:{corpus}").documents()) == sorted(by_files)
    assert list(open_source(f"hf:{corpus / '0.txt'}").documents()) == by_files[:1]
    assert list(open_source(f"hf:{corpus / '4.txt.gz'}").documents()) == by_files[-1:]


def test_an_hf_error_names_the_error_it_wraps(tmp_path):
    """datasets wraps a file's error in "An error occurred while generating the dataset"; the file's own
    error (here a row that is no JSON) had been left out."""
    pytest.importorskip("datasets")
    (tmp_path / "rows.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(MemlabError, match=r"cannot load hf:.*rows.jsonl:train: .+: .+") as e:
        list(open_source(f"hf:{tmp_path / 'rows.jsonl'}").documents())
    assert "occurred while generating the dataset: " in str(e.value)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("nope", "unknown corpus source 'nope'; valid choices: stdlib-code"),
        ("files:/definitely/not/here/*.txt", "matches no file"),
        ("hf:", "needs a dataset name"),
    ],
)
def test_bad_sources(spec, fragment):
    with pytest.raises(MemlabError, match=fragment):
        list(open_source(spec).documents())


# ------------------------------------------------------------------- shards


def test_shards_round_trip_exactly(documents, byte_shards, byte_tok):
    header = read_header(byte_shards)
    assert header["tokenizer_hash"] == byte_tok.hash and header["dtype"] == "uint16"
    assert len(header["splits"]["train"]["shards"]) > 1  # shard_tokens=1000 forces several files
    by_split = {s: split_documents(stream(byte_shards, s), byte_tok) for s in ("train", "val")}
    expected_val = [d for d in documents if is_validation(d, 0.2)]
    assert by_split["val"] == expected_val and by_split["train"] == [d for d in documents if d not in expected_val]
    assert 0 < len(expected_val) < len(documents)
    for split, docs in by_split.items():
        assert header["splits"][split]["documents"] == len(docs)
        assert header["splits"][split]["tokens"] == sum(len(d.encode()) + 1 for d in docs)
    assert load_tokenizer(byte_shards).hash == byte_tok.hash  # the tokenizer travels with the shards


def test_split_is_stable_when_documents_are_added_or_reordered(documents, tmp_path, byte_tok):
    (tmp_path / "a").mkdir()
    for i, d in enumerate(documents[:30]):
        (tmp_path / "a" / f"{i:03d}.txt").write_text(d)
    (tmp_path / "b").mkdir()
    for i, d in enumerate(reversed(documents)):
        (tmp_path / "b" / f"{i:03d}.txt").write_text(d)
    prepare_shards(f"files:{tmp_path}/a/*.txt", byte_tok, tmp_path / "out_a", val_fraction=0.3)
    prepare_shards(f"files:{tmp_path}/b/*.txt", byte_tok, tmp_path / "out_b", val_fraction=0.3)
    val_a = set(split_documents(stream(tmp_path / "out_a", "val"), byte_tok))
    val_b = set(split_documents(stream(tmp_path / "out_b", "val"), byte_tok))
    assert val_a and val_a == val_b & set(documents[:30])


def test_reuse_rebuild_and_force(corpus_dir, tmp_path, byte_tok):
    src = f"files:{corpus_dir}/doc_00*.txt"
    first = prepare_shards(src, byte_tok, tmp_path)
    assert not first.reused and first.mb_per_s > 0 and "throughput" in first.summary()
    again = prepare_shards(src, byte_tok, tmp_path)
    assert again.reused and again.header == first.header and "up to date" in again.summary()
    assert not prepare_shards(src, byte_tok, tmp_path, force=True).reused
    assert not prepare_shards(src, byte_tok, tmp_path, val_fraction=0.5).reused  # another request


def test_changed_source_file_triggers_rebuild(tmp_path, byte_tok):
    (tmp_path / "in").mkdir()
    f = tmp_path / "in" / "x.txt"
    f.write_text("version one")
    prepare_shards(f"files:{f}", byte_tok, tmp_path / "out", val_fraction=0)
    f.write_text("version two, longer")
    result = prepare_shards(f"files:{f}", byte_tok, tmp_path / "out", val_fraction=0)
    assert not result.reused
    assert split_documents(stream(tmp_path / "out", "train"), byte_tok) == ["version two, longer"]


def test_truncated_and_tampered_shards_are_detected(corpus_dir, tmp_path, byte_tok):
    src = f"files:{corpus_dir}/doc_01*.txt"
    prepare_shards(src, byte_tok, tmp_path, val_fraction=0)
    shard = tmp_path / read_header(tmp_path)["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(data)
    with pytest.raises(MemlabError, match="checksum"):
        TokenShards(tmp_path, "train")
    shard.write_bytes(data[:-2])
    with pytest.raises(MemlabError, match="truncated"):
        TokenShards(tmp_path, "train", verify=False)
    assert not prepare_shards(src, byte_tok, tmp_path, val_fraction=0).reused  # prepare repairs it
    TokenShards(tmp_path, "train")


def test_a_shard_damaged_in_place_is_refused_where_it_is_read(corpus_dir, tmp_path, byte_tok):
    """Training reads shards without checksums; a damaged id had crashed in the embedding."""
    prepare_shards(f"files:{corpus_dir}/doc_01*.txt", byte_tok, tmp_path, val_fraction=0)
    shard = tmp_path / read_header(tmp_path)["splits"]["train"]["shards"][0]["file"]
    shard.write_bytes(b"\xff" * shard.stat().st_size)
    shards = TokenShards(tmp_path, "train", byte_tok, verify=False)
    with pytest.raises(MemlabError, match="outside the tokenizer's 261: they are damaged"):
        shards.random_windows(2, 8, np.random.default_rng(0))
    with pytest.raises(MemlabError, match="damaged"):
        next(shards.evaluation_windows(2, 8))


def test_tokenizer_mismatch_and_bad_header(documents, byte_shards, tmp_path):
    other = build_tokenizer("bpe", texts=documents, vocab_size=300)
    with pytest.raises(MemlabError, match="made with tokenizer"):
        TokenShards(byte_shards, "train", tokenizer=other)
    with pytest.raises(MemlabError, match="run `memlab data prepare` first"):
        TokenShards(tmp_path, "train")
    (tmp_path / HEADER_FILE).write_text("{not json")
    with pytest.raises(MemlabError, match="corrupt"):
        TokenShards(tmp_path, "train")
    with pytest.raises(MemlabError, match="unknown split 'test'"):
        TokenShards(byte_shards, "test")


def test_empty_corpus_is_an_error(tmp_path, byte_tok):
    (tmp_path / "blank.txt").write_text("  \n\n ")
    with pytest.raises(MemlabError, match="no documents"):
        prepare_shards(f"files:{tmp_path}/*.txt", byte_tok, tmp_path / "out")


def test_a_failed_rebuild_keeps_the_shards_already_there(corpus_dir, tmp_path, byte_tok):
    """The old shards used to be deleted before the new ones were written: an empty corpus, a bad
    document or an interrupt then left a directory without data."""
    out = tmp_path / "data"
    good = prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, out, val_fraction=0.2, shard_tokens=1000)
    before = stream(out, "train")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    with pytest.raises(MemlabError, match="no documents"):
        prepare_shards(f"files:{tmp_path}/blank.txt", byte_tok, out)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(MemlabError, match="holds int, not text"):
        prepare_shards(f"files:{tmp_path}/bad.jsonl", byte_tok, out)
    again = prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, out, val_fraction=0.2, shard_tokens=1000)
    assert again.reused and again.header == good.header and np.array_equal(stream(out, "train"), before)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging directory left
    with pytest.raises(MemlabError, match="no documents"):
        prepare_shards(f"files:{tmp_path}/blank.txt", byte_tok, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # nor an empty directory where there was none


def test_an_out_path_that_is_a_file_is_one_clear_error(corpus_dir, tmp_path, byte_tok):
    (tmp_path / "taken").write_text("mine")
    for out in (tmp_path / "taken", tmp_path / "taken" / "data"):
        with pytest.raises(MemlabError, match="is a file, not a directory|which is a file, not a directory"):
            prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, out)
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_run_is_not_a_shard_directory_and_a_killed_preparation_is_cleared(corpus_dir, tmp_path, byte_tok):
    """Shards had been written into a run, replacing its tokenizer; a killed preparation's staging
    directory had stayed in --out for good."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "checkpoints" / "step_2" / "manifest.json").write_text("{}")
    for out in (run, run / "checkpoints" / "step_2"):
        with pytest.raises(MemlabError, match="holds a training run or checkpoints"):
            prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, out)
    import subprocess
    import sys

    from memlab.staging import host

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = f".prepare.{host()}.{int(gone.stdout)}.tmp"  # a staging directory whose process is gone
    out = tmp_path / "data"
    (out / killed).mkdir(parents=True)
    (out / ".prepare-k1l2m3").mkdir()  # an older memlab's
    prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, out, val_fraction=0.2)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    (out / killed).mkdir()  # killed after another preparation had made these shards: the reuse clears it too
    assert prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, out, val_fraction=0.2).reused
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        running = out / f".prepare.{host()}.{live.pid}.tmp"  # a preparation still at work
        running.mkdir()
        prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, out, val_fraction=0.2)
        assert running.is_dir()
        live.kill()


def test_two_preparations_of_one_directory_at_once_wait_for_each_other(corpus_dir, tmp_path, byte_tok):
    """Two runs sharing the cache: the second had removed the first's staging directory as stale."""
    import threading
    import time

    class Slow(sources.Source):  # the corpus directory's documents, slowly: the preparations overlap
        spec, fingerprint = "slow", "slow-1"

        def documents(self):
            for text in open_source(f"files:{corpus_dir}/*.txt").documents():
                time.sleep(0.01)
                yield text

    out, results, errors = tmp_path / "data", [], []

    def prepare():
        try:
            results.append(prepare_shards(Slow(), byte_tok, out, val_fraction=0.2))
        except Exception as e:  # noqa: BLE001 (the failure is what the test reports)
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.2)  # the first is writing its staging directory when the second starts
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(r.reused for r in results) == [False, True]  # the second reused the first's
    TokenShards(out, "val")  # whole: sizes and checksums verified
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_without_a_lock_file_shards_are_still_prepared_and_reused(corpus_dir, tmp_path, byte_tok, monkeypatch):
    """A parent directory that cannot hold the lock (a read-only cache, another user's lock file) had
    failed with a PermissionError, even to reuse shards that were there."""
    from memlab import locks

    def no_lock(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(locks, "FileLock", no_lock)
    spec = f"files:{corpus_dir}/*.txt"
    assert not prepare_shards(spec, byte_tok, tmp_path / "data", val_fraction=0.2).reused  # prepared alone
    assert prepare_shards(spec, byte_tok, tmp_path / "data", val_fraction=0.2).reused  # reuse takes no lock


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_model_export_is_not_a_shard_directory(corpus_dir, tmp_path, byte_tok, name):
    """prepare --out had overwritten an export's tokenizer."""
    export = tmp_path / "export"
    export.mkdir()
    (export / name).write_text("{}")
    build_tokenizer("bpe", texts=["abc def"] * 10, vocab_size=300).save(export)
    saved = (export / "tokenizer.memlab.json").read_text()
    with pytest.raises(MemlabError, match="holds a model .* prepare the shards in another directory"):
        prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, export)
    assert (export / "tokenizer.memlab.json").read_text() == saved and not (export / HEADER_FILE).exists()


def test_a_header_that_is_json_but_not_a_header_is_corrupt(byte_shards, tmp_path):
    for text in ("[1, 2]", json.dumps({"format": read_header(byte_shards)["format"]})):
        (tmp_path / HEADER_FILE).write_text(text)
        with pytest.raises(MemlabError, match="is corrupt"):
            TokenShards(tmp_path, "train")


def test_a_corrupt_parquet_file_is_one_clear_error(tmp_path, byte_tok):
    pytest.importorskip("pyarrow")
    (tmp_path / "a.parquet").write_text("not parquet")
    with pytest.raises(MemlabError, match="cannot read .*a.parquet as parquet: Parquet magic bytes"):
        prepare_shards(f"files:{tmp_path}/*.parquet", byte_tok, tmp_path / "out")


def test_bpe_on_stdlib_code(tmp_path):
    result = prepare_shards("stdlib-code", "bpe", tmp_path, vocab_size=300, max_docs=8, val_fraction=0)
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "bpe" and tok.hash == result.header["tokenizer_hash"] == result.tokenizer.hash
    assert result.header["splits"]["train"]["documents"] == 8
    docs = split_documents(stream(tmp_path, "train"), tok)
    assert docs == [d for d in open_source("stdlib-code").documents() if d.strip()][:8]
    assert prepare_shards("stdlib-code", "bpe", tmp_path, vocab_size=300, max_docs=8, val_fraction=0).reused


def test_the_bpe_learns_from_the_training_documents_only(corpus_dir, documents, tmp_path, monkeypatch):
    """The validation documents must not shape the tokenizer that their perplexity is measured with."""
    learned = []

    def recording(spec, texts=None, vocab_size=8192):
        learned.extend(texts)
        return build_tokenizer(spec, texts=learned, vocab_size=vocab_size)

    monkeypatch.setattr("memlab.data.text.build_tokenizer", recording)
    result = prepare_shards(f"files:{corpus_dir}/*.txt", "bpe", tmp_path, vocab_size=300, val_fraction=0.3)
    train = split_documents(stream(tmp_path, "train"), result.tokenizer)
    val = split_documents(stream(tmp_path, "val"), result.tokenizer)
    assert len(val) > 10 and len(train) + len(val) == len(documents)
    assert learned == train and not set(learned) & set(val)
    assert not any(is_validation(d, 0.3) for d in learned)


def test_another_corpus_in_a_saved_tokenizer(corpus_dir, tmp_path):
    """--tokenizer DIR reads the tokenizer saved there (a run's trained BPE), not a Hugging Face one."""
    first = prepare_shards(f"files:{corpus_dir}/*.txt", "bpe", tmp_path / "a", vocab_size=300)
    run_dir = tmp_path / "run"
    first.tokenizer.save(run_dir)  # as memlab train saves it in a run
    second = prepare_shards("stdlib-docs", str(run_dir), tmp_path / "b", max_docs=4)
    assert second.header["tokenizer_hash"] == first.tokenizer.hash == load_tokenizer(tmp_path / "b").hash
    with pytest.raises(MemlabError, match="holds no tokenizer"):
        prepare_shards("stdlib-docs", str(corpus_dir), tmp_path / "c", max_docs=4)


# ------------------------------------------------------------------ windows


def test_shards_prepared_again_with_other_text_are_refused_by_their_recorded_checksum(tmp_path, byte_tok):
    (tmp_path / "a.txt").write_text("some text")
    prepare_shards(f"files:{tmp_path}/a.txt", byte_tok, tmp_path / "out", val_fraction=0)
    recorded = data_checksum(read_header(tmp_path / "out"))
    assert TokenShards(tmp_path / "out", "train", checksum=recorded).num_tokens == 10
    (tmp_path / "a.txt").write_text("other text")
    prepare_shards(f"files:{tmp_path}/a.txt", byte_tok, tmp_path / "out", val_fraction=0)
    with pytest.raises(MemlabError, match="no longer holds the data the run recorded"):
        TokenShards(tmp_path / "out", "train", checksum=recorded)


def test_random_windows_are_deterministic_slices(byte_shards):
    shards = TokenShards(byte_shards, "train")
    flat = stream(byte_shards, "train")
    a = shards.random_windows(6, 50, np.random.default_rng(3))
    b = shards.random_windows(6, 50, np.random.default_rng(3))
    assert a.shape == (6, 51) and a.dtype == torch.int64 and (a == b).all()
    for row in a.numpy():  # each window is a contiguous slice of the split (crossing shard files)
        assert any(np.array_equal(flat[i : i + 51], row) for i in np.flatnonzero(flat == row[0]))


def test_evaluation_windows_predict_every_token_once(byte_shards):
    shards = TokenShards(byte_shards, "val")
    flat = stream(byte_shards, "val")
    batches = list(shards.evaluation_windows(3, 40))
    n = shards.num_sequential_windows(40)
    sizes = [w.shape[0] for _, w in batches]
    assert sizes[:-1] == [3] * (len(batches) - 1) and sum(sizes) == n
    targets = np.concatenate([w[:, 1:].numpy().ravel() for _, w in batches])
    assert (targets == flat[1 : n * 40 + 1]).all()
    assert (np.concatenate([s for s, _ in batches]) == np.arange(n) * 40).all()


def test_fewer_evaluation_windows_are_spread_over_the_whole_split(byte_shards):
    """A prefix had measured the split's first documents only."""
    shards = TokenShards(byte_shards, "val")
    flat, n = stream(byte_shards, "val"), shards.num_sequential_windows(40)
    starts = np.concatenate([s for s, _ in shards.evaluation_windows(3, 40, max_windows=4)])
    assert len(starts) == 4 < n and (starts % 40 == 0).all()  # slots of the consecutive windows
    assert [int(i * n / 4 <= slot < (i + 1) * n / 4) for i, slot in enumerate(starts // 40)] == [1] * 4  # a quarter each
    middle = next(shards.evaluation_windows(1, 40, max_windows=1))[0]
    assert abs(middle[0] / 40 - n / 2) <= 1  # one window: the middle of the split, not its start
    for start, window in zip(starts, next(shards.evaluation_windows(4, 40, max_windows=4))[1].numpy()):
        assert (window == flat[start : start + 41]).all()


def test_a_window_needs_one_token_more_than_its_length(byte_shards):
    """A window of T inputs reads T + 1 tokens (its targets are shifted by one): a split of exactly T tokens
    holds none, of T + 1 one.  Counting N // T had promised a window too many whenever T divides N."""
    shards = TokenShards(byte_shards, "val")
    n = shards.num_tokens
    for seq_len in (1, 2, 3, 8, 40, n // 4, n // 2, n - 2, n - 1, n, n + 1):
        fitting = sum(1 for start in range(0, n, seq_len) if start + seq_len + 1 <= n)  # consecutive starts
        assert shards.num_sequential_windows(seq_len) == fitting, seq_len
    assert shards.num_sequential_windows(n - 1) == 1 and shards.num_sequential_windows(n) == 0
    assert len(shards.evaluation_starts(n - 1)) == 1
    with pytest.raises(MemlabError, match="fewer than one window"):
        shards.evaluation_starts(n)


def test_documents_before_counts_the_eos_ids_before_a_position(byte_shards, byte_tok):
    shards = TokenShards(byte_shards, "val")
    flat = stream(byte_shards, "val")
    positions = np.arange(0, len(flat), 7)
    naive = [int((flat[:p] == byte_tok.eos_id).sum()) for p in positions]  # an EOS belongs to the document it ends
    assert shards.documents_before(positions).tolist() == naive and naive[-1] > 2


def test_ranks_see_disjoint_slices(byte_shards):
    total = TokenShards(byte_shards, "train").num_tokens
    ranks = [TokenShards(byte_shards, "train", rank=r, world_size=3) for r in range(3)]
    assert [r.lo for r in ranks[1:]] == [r.hi for r in ranks[:-1]] and sum(r.num_tokens for r in ranks) == total
    flat = stream(byte_shards, "train")
    for r in ranks:
        w = next(r.evaluation_windows(1, 20))[1][0].numpy()
        assert (w == flat[r.lo : r.lo + 21]).all()
    reads = []
    ranks[1].tokens = lambda a, b: reads.append((a, b)) or flat[a:b]  # record what the windows read
    ranks[1].random_windows(200, 30, np.random.default_rng(0))
    assert min(a for a, _ in reads) >= ranks[1].lo and max(b for _, b in reads) <= ranks[1].hi
    assert max(b for _, b in reads) > ranks[1].hi - 40  # and they do reach the end of the slice
    with pytest.raises(MemlabError, match="fewer than one window"):
        ranks[0].random_windows(1, total, np.random.default_rng(0))


# --------------------------------------------------------------- HF datasets


def test_hf_source_offline_from_local_files(tmp_path, byte_tok):
    pytest.importorskip("datasets")
    rows = [{"text": f"story number {i}", "id": i} for i in range(12)]
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = open_source(f"hf:{tmp_path / 'ds'}:train")
    assert list(src.documents()) == [r["text"] for r in rows]
    assert list(open_source(f"hf:{tmp_path / 'ds' / 'train.jsonl'}:train[:3]").documents()) == [
        r["text"] for r in rows[:3]
    ]
    result = prepare_shards(src, byte_tok, tmp_path / "out", val_fraction=0)
    assert split_documents(stream(tmp_path / "out", "train"), byte_tok) == [r["text"] for r in rows]
    assert prepare_shards(open_source(f"hf:{tmp_path / 'ds'}:train"), byte_tok, tmp_path / "out", val_fraction=0).reused
    assert result.header["source"].startswith("hf:")


def test_a_streamed_local_hf_dataset_is_rebuilt_when_its_file_changes(tmp_path, byte_tok):
    """A stream had been fingerprinted by its name: shards of the old text were reused."""
    pytest.importorskip("datasets")
    data = tmp_path / "ds.jsonl"
    data.write_text('{"text": "alpha one"}\n{"text": "beta two"}\n')
    spec = f"hf:{data}:train"
    assert not prepare_shards(open_source(spec, streaming=True), byte_tok, tmp_path / "out", val_fraction=0).reused
    data.write_text('{"text": "gamma three"}\n{"text": "delta four"}\n{"text": "eps five"}\n')
    again = prepare_shards(open_source(spec, streaming=True), byte_tok, tmp_path / "out", val_fraction=0)
    assert not again.reused and again.header["splits"]["train"]["documents"] == 3


def test_hf_reads_zstandard_compressed_json_lines(tmp_path):
    """Corpora often ship as .jsonl.zst; the hf extra brings zstandard for them."""
    pytest.importorskip("datasets")
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "rows.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "zst row"}\n'))
    assert list(open_source(f"hf:{tmp_path / 'rows.jsonl.zst'}").documents()) == ["zst row"]


def test_hf_local_files_by_format_compressed_or_saved(tmp_path):
    """A .txt had been one document per line and a .jsonl.gz raw JSON text; save_to_disk had failed."""
    datasets = pytest.importorskip("datasets")
    import gzip

    (tmp_path / "story.txt").write_text("line one\nline two\n\nafter a blank line")
    (tmp_path / "notes.md").write_text("# Title\n\nbody")
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as f:
        f.write('{"content": "first\\nrow"}\n{"content": "second"}\n')
    assert list(open_source(f"hf:{tmp_path / 'story.txt'}").documents()) == ["line one\nline two\n\nafter a blank line"]
    assert list(open_source(f"hf:{tmp_path / 'notes.md'}").documents()) == ["# Title\n\nbody"]
    assert list(open_source(f"hf:{tmp_path / 'rows.jsonl.gz'}").documents()) == ["first\nrow", "second"]
    (tmp_path / "stories").mkdir()
    (tmp_path / "stories" / "train.txt").write_text("one\nstory")
    assert list(open_source(f"hf:{tmp_path / 'stories'}").documents()) == ["one\nstory"]
    (tmp_path / "data.bin").write_bytes(b"\0")
    with pytest.raises(MemlabError, match="cannot read a .bin file; valid: .jsonl"):
        list(open_source(f"hf:{tmp_path / 'data.bin'}").documents())

    single = datasets.Dataset.from_dict({"story": ["a", "b", "c"]})
    single.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict(train=single, test=datasets.Dataset.from_dict({"story": ["t"]})).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    assert list(open_source(f"hf:{tmp_path / 'saved'}").documents()) == ["a", "b", "c"]
    assert list(open_source(f"hf:{tmp_path / 'saved'}:train[1:]", streaming=True).documents()) == ["b", "c"]
    assert list(open_source(f"hf:{tmp_path / 'saved_dict'}:test").documents()) == ["t"]
    with pytest.raises(MemlabError, match="has no split 'validation'; valid choices: train, test"):
        list(open_source(f"hf:{tmp_path / 'saved_dict'}:validation").documents())


def test_hf_reads_the_chosen_text_field(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "rows.jsonl").write_text('{"title": "Title A", "text": "body a"}\n{"title": "Title B", "text": "body b"}\n')
    assert list(open_source(f"hf:{tmp_path / 'rows.jsonl'}").documents()) == ["body a", "body b"]
    assert list(open_source(f"hf:{tmp_path / 'rows.jsonl'}", text_field="title").documents()) == ["Title A", "Title B"]


def test_hf_stream_errors_and_unknown_columns_are_clear(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(MemlabError, match="cannot read hf:.*bad.jsonl:train: .*JSON"):
        list(open_source(f"hf:{tmp_path / 'bad.jsonl'}", streaming=True).documents())

    class Stream(list):  # a stream that knows its columns only once read
        column_names = None

    src = open_source("hf:some/stream", streaming=True)
    monkeypatch.setattr(type(src), "_load", lambda self: Stream([{"id": 1, "story": "s1"}, {"id": 2, "story": "s2"}]))
    assert list(src.documents()) == ["s1", "s2"]
    src = open_source("hf:some/stream")
    monkeypatch.setattr(type(src), "_load", lambda self: Stream([{"id": 1, "body": "x"}]))
    with pytest.raises(MemlabError, match="none of the text fields .* one of: id, body$"):
        list(src.documents())


def test_jsonl_text_field_is_chosen_once_per_file(tmp_path):
    """The field had been chosen row by row: rows of one file could give text from different fields."""
    (tmp_path / "a.jsonl").write_text('{"text": "one", "code": "x"}\n{"code": "two"}\n')
    with pytest.raises(MemlabError, match="a.jsonl:2 lacks the file's text field 'text'; fields: code"):
        list(open_source(f"files:{tmp_path}/a.jsonl").documents())


def test_hf_source_missing_dataset_is_one_clear_error():
    pytest.importorskip("datasets")
    with pytest.raises(MemlabError, match="cannot load hf:no-such-user/no-such-dataset"):
        list(open_source("hf:no-such-user/no-such-dataset").documents())


# ---------------------------------------------------------------------- CLI


def test_cli_data_prepare(documents, corpus_dir, tmp_path, capsys):
    args = ["data", "prepare", "--source", f"files:{corpus_dir}/doc_02*.txt", "--tokenizer", "byte"]
    main([*args, "--out", str(tmp_path), "--val-fraction", "0"])
    out = capsys.readouterr().out
    assert f"prepared files:{corpus_dir}/doc_02*.txt" in out and "MB/s" in out
    assert TokenShards(tmp_path, "train").num_tokens == sum(len(d.encode()) + 1 for d in documents[20:30])
    with pytest.raises(SystemExit) as e:
        main(["data", "prepare", "--source", "bogus", "--out", str(tmp_path)])
    assert e.value.code == 2 and "unknown corpus source 'bogus'" in capsys.readouterr().err


def test_cli_error_is_the_last_line_after_the_progress_bar(tmp_path, capsys):
    """The progress bar was closed after the error was printed: its last refresh ended stderr."""
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n{bad json\n')
    with pytest.raises(SystemExit) as e:
        main(["data", "prepare", "--source", f"files:{tmp_path}/*.jsonl", "--tokenizer", "byte",
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.endswith("\n")
    assert err.splitlines()[-1] == f"memlab: error: {tmp_path}/a.jsonl:2 is not a JSON object (files: reads JSON lines)"


@pytest.mark.parametrize("val_fraction, warned", [(0.03, True), (0.3, False)])
def test_a_validation_split_too_small_for_a_perplexity_interval_is_warned_of(corpus_dir, byte_tok, tmp_path, caplog,
                                                                             val_fraction, warned):
    with caplog.at_level("WARNING", logger="memlab.data.text"):
        prepare_shards(f"files:{corpus_dir}/*.txt", byte_tok, tmp_path, val_fraction=val_fraction)
    documents = read_header(tmp_path)["splits"]["val"]["documents"]
    assert (documents < 5) == warned and (0 < documents or not warned)
    messages = [r.getMessage() for r in caplog.records if "fell into the validation split" in r.getMessage()]
    assert messages == ([f"only {documents} document(s) of files:{corpus_dir}/*.txt fell into the validation split: "
                         "a perplexity interval resamples documents and needs 5; a larger --val-fraction (of memlab train or data "
                         "prepare) or a larger corpus holds out more"] if warned else [])


def test_a_run_deep_inside_the_shard_directory_does_not_stop_a_preparation(corpus_dir, tmp_path, byte_tok):
    """Prepare writes at its directory's top level: a run further down is not at risk (export --overwrite,
    which deletes the whole directory, looks at every depth)."""
    run = tmp_path / "project" / "experiments" / "r2"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("format: memlab-train-v1\n")
    (run / "metrics.jsonl").write_text("")
    spec = f"files:{corpus_dir}/*.txt"
    assert not prepare_shards(spec, byte_tok, tmp_path / "project", val_fraction=0.2).reused
    assert (run / "config.yaml").is_file()
