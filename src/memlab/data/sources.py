"""Corpus sources: named streams of text documents.

``open_source(spec)`` understands:

- ``stdlib-code``: every ``.py`` file of the running Python's standard library (its test suite
  included, ``site-packages`` excluded), one document per file: a real code corpus on every machine;
- ``stdlib-docs``: English prose from the standard library: the help topics of ``pydoc_data`` and
  the docstrings of every (non-test) module, one document per topic / module;
- ``hf:NAME[:SPLIT]``: a Hugging Face dataset through ``datasets.load_dataset`` (a hub name found
  in the local cache, a local directory (of ``.txt`` files: one document per file), a directory
  written by ``save_to_disk``, or a local data file: ``.jsonl``/``.json``/``.parquet``/``.csv``
  rows, or ``.txt``/``.md`` one document per file, each possibly compressed
  ``.gz``/``.bz2``/``.xz``/``.zst``); SPLIT may slice (``train[:1000]``);
- ``files:GLOB``: local files, read as UTF-8 (a byte-order mark dropped; undecodable bytes become
  U+FFFD, with a warning; a file mostly undecodable is refused as binary), decompressed where named
  ``.gz``/``.bz2``/``.xz``/``.zst``; ``.jsonl``/``.json`` (one document per line, from the text field
  chosen on the file's first object), ``.parquet`` (a text column, needs ``pyarrow``), anything else
  one document per file, its line ends made ``\n``.

A local text file reads as the same document through ``files:`` and ``hf:`` (no byte-order mark, line
ends ``\n``, undecodable bytes U+FFFD), so its train/validation split is the same whichever names it;
only a compressed one with undecodable bytes differs: datasets refuses it.

A source has ``documents()`` (an iterator of ``str``, the same order every time),
``keyed_documents()`` (the same documents as ``Document(text, split_key)``: the train/validation
split is drawn from the key, which is the text itself except for a stdlib-docs docstring, keyed by
the text of its source file so that it falls in the split that file has in stdlib-code) and a
``fingerprint`` that changes when its inputs change, which is what prepared shards are checked
against to decide whether they are up to date.
"""

from __future__ import annotations

import ast
import bz2
import contextlib
import glob
import gzip
import hashlib
import json
import logging
import lzma
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO, NamedTuple

from memlab.errors import MemlabError

log = logging.getLogger(__name__)
SOURCE_KINDS = ("stdlib-code", "stdlib-docs", "hf:NAME[:SPLIT]", "files:GLOB")
TEXT_FIELDS = ("text", "content", "story", "code", "document")  # tried in this order
HF_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text", ".md": "text"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # a data file's suffix before one of these names its format
# in the fingerprints of files: and local hf: sources: their documents had been read otherwise (a byte-order
# mark kept, a JSON-lines field chosen per row, a .txt file one document per line; line ends and a mark that
# files: and hf: read differently, a compressed file read as its bytes), so shards of those are rebuilt
READER = "reader 3"
BINARY_SHARE = 0.1  # a file whose text is more than this share U+FFFD (undecodable bytes) is refused as binary
# datasets' text builder reading a file as files: does (it makes line ends \n itself: universal newlines)
TEXT_BUILDER_OPTIONS = {"sample_by": "document", "encoding": "utf-8-sig", "encoding_errors": "replace"}


class Document(NamedTuple):
    """A document and the key its train/validation split is drawn from."""

    text: str
    split_key: str


class Source:
    """A reproducible stream of text documents."""

    spec: str

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def keyed_documents(self) -> Iterator[Document]:
        """The documents with their split keys (by default the text itself)."""
        return (Document(text, text) for text in self.documents())

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError


def open_source(spec: str, text_field: str | None = None, streaming: bool = False) -> Source:
    """The source named by ``spec`` (see the module docstring); a MemlabError for an unknown one,
    or for an option its kind does not take (streaming is for hf:, a text field for files: and hf:)."""
    if streaming and not spec.startswith("hf:"):
        raise MemlabError(f"streaming is for hf: datasets, not {spec!r}")
    if spec in ("stdlib-code", "stdlib-docs") and text_field is not None:
        raise MemlabError(f"{spec} has no fields: a text field is for files: and hf: sources")
    if spec == "stdlib-code":
        return StdlibCode()
    if spec == "stdlib-docs":
        return StdlibDocs()
    if spec.startswith("files:"):
        return Files(spec[len("files:") :], text_field)
    if spec.startswith("hf:"):
        name, _, split = spec[len("hf:") :].partition(":")
        if not name:
            raise MemlabError("hf: needs a dataset name or path, e.g. hf:roneneldan/TinyStories:train")
        return HFDataset(name, split or "train", text_field, streaming)
    raise MemlabError(f"unknown corpus source {spec!r}; valid choices: {', '.join(SOURCE_KINDS)}")


def _files_fingerprint(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _stdlib_text(raw: bytes) -> str:
    """A standard-library file's text (undecodable bytes become U+FFFD)."""
    return raw.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------- stdlib


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(include_tests: bool = True) -> list[Path]:
    """The standard library's ``.py`` files in a fixed (sorted) order."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "__pycache__"}
    if not include_tests:
        skip |= {"test", "tests", "idle_test"}
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in skip)
        files += [Path(directory) / n for n in sorted(names) if n.endswith(".py")]
    return files


@dataclass
class StdlibCode(Source):
    spec: str = "stdlib-code"

    def documents(self) -> Iterator[str]:
        for path in stdlib_files():
            yield _stdlib_text(path.read_bytes())

    @property
    def fingerprint(self) -> str:
        return _files_fingerprint(stdlib_files(), sys.version)


def pydoc_topics() -> list[str]:
    """The interpreter's help topics (the language reference in prose), one string per topic."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def module_docstrings(source: bytes | str) -> str:
    """The module, class and function docstrings of one source file, separated by blank lines."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    docs = (ast.get_docstring(n) for n in nodes)
    return "\n\n".join(d for d in docs if d)


@dataclass
class StdlibDocs(Source):
    spec: str = "stdlib-docs"

    def documents(self) -> Iterator[str]:
        return (doc.text for doc in self.keyed_documents())

    def keyed_documents(self) -> Iterator[Document]:
        """The help topics (keyed by their text), then each module's docstrings keyed by the module's
        text: a docstring is held out exactly when stdlib-code holds out the file it came from."""
        for topic in pydoc_topics():
            yield Document(topic, topic)
        for path in stdlib_files(include_tests=False):
            raw = path.read_bytes()
            if text := module_docstrings(raw):
                yield Document(text, _stdlib_text(raw))

    @property
    def fingerprint(self) -> str:  # (the marker: docstrings had been split by their own text)
        return _files_fingerprint(stdlib_files(include_tests=False), f"{sys.version}\0split by source file")


# ----------------------------------------------------------------------- files


@dataclass
class Files(Source):
    pattern: str
    text_field: str | None = None

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"files:{self.pattern}"

    def paths(self) -> list[Path]:
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(self.pattern), recursive=True))
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise MemlabError(f"files:{self.pattern} matches no file")
        return paths

    def documents(self) -> Iterator[str]:
        for path in self.paths():
            kind = _format(path)
            if kind in (".jsonl", ".json"):
                yield from self._jsonl(path)
            elif kind == ".parquet":
                yield from self._parquet(path)
            else:
                yield _text_file(path)

    def _jsonl(self, path: Path) -> Iterator[str]:
        """One document per line, from the text field chosen on the file's first object."""
        bad_lines, field = 0, None
        with _reading(path) as f:
            for line_no, raw in enumerate(f, 1):
                line, bad = _decode(raw)
                bad_lines += bad
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise MemlabError(f"{where} is not a JSON object (files: reads JSON lines)") from None
                if not isinstance(row, dict):
                    raise MemlabError(f"{where}: expected a JSON object with a text field")
                field = field or text_field(row, self.text_field, where)
                if field not in row:
                    raise MemlabError(f"{where} lacks the file's text field {field!r}; fields: {', '.join(row)}")
                text = _document(row[field], field, where)
                if text is not None:
                    yield text
        if bad_lines:
            _warn_undecodable(path, f"{bad_lines} line(s)")

    def _parquet(self, path: Path) -> Iterator[str]:
        try:
            import pyarrow
            import pyarrow.parquet as pq
        except ImportError:
            raise MemlabError(f"reading {path} needs pyarrow: pip install 'memlab[hf]'") from None
        try:
            table = pq.ParquetFile(path)
            column = text_field(table.schema_arrow.names, self.text_field, str(path))
            for batch in table.iter_batches(columns=[column]):
                for value in batch.column(0).to_pylist():
                    if (text := _document(value, column, str(path))) is not None:
                        yield text
        except pyarrow.ArrowException as e:  # not a parquet file, or a truncated one
            raise MemlabError(f"cannot read {path} as parquet: {str(e).splitlines()[0]}") from None

    @property
    def fingerprint(self) -> str:
        return _files_fingerprint(self.paths(), f"{self.text_field or ''}\0{READER}")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[BinaryIO]:
    """A local file opened for its bytes, decompressed by its last suffix (.gz/.bz2/.xz/.zst); a corrupt
    or truncated compressed stream, met while the body reads it, is a MemlabError."""
    suffix = path.suffix.lower()
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise MemlabError(f"reading {path} needs zstandard: pip install 'memlab[hf]'") from None
        opener, errors = zstandard.open, (OSError, zstandard.ZstdError)
    else:
        opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)
        errors = (OSError, EOFError, lzma.LZMAError)  # what gzip, bz2 and lzma raise for a corrupt stream
    try:
        with opener(path, "rb") as f:
            yield f
    except errors as e:
        hint = " (a corrupt or truncated compressed file?)" if suffix in COMPRESSIONS else ""
        raise MemlabError(f"cannot read {path}: {_first_line(e)}{hint}") from None


def _text_file(path: Path) -> str:
    """A whole file as one document: UTF-8 without a byte-order mark, line ends \\n; refused if binary."""
    with _reading(path) as f:
        raw = f.read()
    text, bad = _decode(raw)
    if bad:
        share = text.count("\ufffd") / len(text)
        if share > BINARY_SHARE:
            raise MemlabError(f"{path} does not read as text ({share:.0%} undecodable bytes): leave it out of files:")
        _warn_undecodable(path, "the file")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text without a byte-order mark, and whether undecodable bytes had to become U+FFFD."""
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8-sig", errors="replace"), True


def _warn_undecodable(path: Path, where: str) -> None:
    log.warning("%s is not valid UTF-8: undecodable bytes in %s were read as U+FFFD", path, where)


def _document(value: object, field: str, where: str) -> str | None:
    """A row's text: None for a null (no document, in every reader); one line for a value that is
    not text; lone surrogates (a cut escape such as "\\ud83d") become U+FFFD, as undecodable bytes do."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise MemlabError(f"{where}: field {field!r} holds {type(value).__name__}, not text; pass --text-field")
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def text_field(names: Iterable[str], wanted: str | None, where: str) -> str:
    """The field (of a row, or column of a table) that holds the text: ``wanted``, else the first of
    TEXT_FIELDS present; the one choice of every reader (files: and hf:)."""
    names = [str(n) for n in names]
    if wanted is not None:
        if wanted not in names:
            raise MemlabError(f"{where} has no field {wanted!r}; fields: {', '.join(names) or 'none'}")
        return wanted
    for name in TEXT_FIELDS:
        if name in names:
            return name
    raise MemlabError(
        f"{where} has none of the text fields {TEXT_FIELDS}; pass --text-field, one of: {', '.join(names) or 'none'}"
    )


# ------------------------------------------------------------------------- hf


@dataclass
class HFDataset(Source):
    name: str
    split: str = "train"
    text_field: str | None = None
    streaming: bool = False

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"hf:{self.name}:{self.split}"

    def _load(self):
        try:
            import datasets
        except ImportError:
            raise MemlabError(f"{self.spec} needs the `datasets` package: pip install 'memlab[hf]'") from None
        local = Path(os.path.expanduser(self.name))
        try:
            if (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file():
                return self._load_saved(datasets, local)
            path, kwargs = self._builder()
            return datasets.load_dataset(path, split=self.split, streaming=self.streaming, **kwargs)
        except MemlabError:
            raise
        except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError...)
            raise MemlabError(
                f"cannot load {self.spec}: {_with_cause(e)} (hub datasets must be in the local cache when "
                f"offline; a local directory or .jsonl/.parquet file also works)"
            ) from None

    def _builder(self) -> tuple[str, dict]:
        """(what ``datasets.load_dataset`` loads, its keyword arguments): a single local data file by the
        packaged builder of its format, a directory of text files one document per file (not per line),
        else the name itself (a hub dataset, or a directory datasets reads by its own rules)."""
        local = Path(os.path.expanduser(self.name))
        if local.is_file():
            return _builder(local)
        if local.is_dir() and _plain_text_dir(local):
            return "text", {"data_dir": str(local), **TEXT_BUILDER_OPTIONS}
        return self.name, {}

    def _load_saved(self, datasets, local: Path):
        """A dataset written by ``save_to_disk`` (one Dataset, or a DatasetDict of splits), sliced by SPLIT."""
        ds = datasets.load_from_disk(str(local))
        name = self.split.partition("[")[0]
        if isinstance(ds, datasets.DatasetDict):
            if name not in ds:
                raise MemlabError(f"{local} has no split {name!r}; valid choices: {', '.join(ds)}")
            ds = ds[name]
        elif name not in ("train", ds.split):  # one saved Dataset: its own split name, or train
            raise MemlabError(f"{local} holds one dataset (split {str(ds.split or 'train')!r}), not split {name!r}")
        part = datasets.ReadInstruction.from_spec(self.split).to_absolute({name: len(ds)})[0]
        ds = ds.select(range(part.from_, part.to))
        return ds.to_iterable_dataset() if self.streaming else ds

    @property
    def _dataset(self):
        if not hasattr(self, "_cached"):
            self._cached = self._load()
        return self._cached

    def documents(self) -> Iterator[str]:
        rows = self._rows()
        names = self._dataset.column_names
        if names is None:  # a stream whose columns are known only once read: those of its first row
            first = next(rows, None)
            if first is None:
                return
            names, rows = list(first), chain([first], rows)
        field = text_field(names, self.text_field, self.spec)
        text_files = self._builder()[0] == "text"  # (datasets keeps a compressed file's byte-order mark)
        for row in rows:
            if (text := _document(row.get(field), field, self.spec)) is not None:
                yield text.removeprefix("\ufeff") if text_files else text

    def _rows(self) -> Iterator[dict]:
        """The dataset's rows; an error while reading them (a stream parses as it goes) is a MemlabError."""
        it = iter(self._dataset)
        while True:
            try:
                row = next(it)
            except StopIteration:
                return
            except Exception as e:
                raise MemlabError(f"cannot read {self.spec}: {_with_cause(e)}") from None
            yield row

    @property
    def fingerprint(self) -> str:
        local = Path(os.path.expanduser(self.name))
        if local.exists():  # a local file or directory: its files say when it changed, streamed or not
            files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
            return _files_fingerprint(files, f"{self.spec}\0{self.text_field}\0{READER}")
        # a cached (map-style) hub dataset has a content fingerprint; a hub stream is identified by name only
        token = getattr(self._dataset, "_fingerprint", None) or "stream"
        return hashlib.sha256(f"{self.spec}\0{self.text_field}\0{token}".encode()).hexdigest()


def _format(path: Path) -> str:
    """A data file's format suffix (``.jsonl`` for ``rows.jsonl.gz``), "" for none."""
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _plain_text_dir(directory: Path) -> bool:
    """Whether every data file of a local dataset directory (not hidden, not its README.md card) is ``.txt``."""
    files = [
        p for p in directory.rglob("*")
        if p.is_file() and p.name != "README.md" and not any(x.startswith(".") for x in p.relative_to(directory).parts)
    ]  # fmt: skip
    return bool(files) and all(_format(p) == ".txt" for p in files)


def _builder(path: Path) -> tuple[str, dict]:
    """(packaged ``datasets`` builder, its keyword arguments) of a local data file, by its suffix
    (a compression suffix is looked through); a MemlabError for a format it does not read."""
    suffix = _format(path)
    if suffix not in HF_BUILDERS:
        raise MemlabError(
            f"hf:{path}: cannot read a {suffix or 'suffix-less'} file; valid: {', '.join(HF_BUILDERS)} "
            f"(optionally {', '.join(COMPRESSIONS)})"
        )
    builder = HF_BUILDERS[suffix]
    return builder, {"data_files": str(path)} | (TEXT_BUILDER_OPTIONS if builder == "text" else {})


def _first_line(e: Exception) -> str:
    """The first line of an exception's message (at most 200 characters), else its type."""
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _with_cause(e: BaseException) -> str:
    """The first line of an exception and, where it wraps another (datasets' "An error occurred while
    generating the dataset"), of the innermost one: the file and what is wrong with it."""
    inner = e
    while (nested := inner.__cause__ or inner.__context__) is not None:
        inner = nested
    return _first_line(e) if inner is e else f"{_first_line(e)}: {_first_line(inner)}"
