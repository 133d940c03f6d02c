"""The results schema: what the code writes is what docs/results_schema.md documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from memlab import provenance
from memlab.errors import MemlabError
from memlab.eval import schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "results_schema.md"


def documented_fields(section: str) -> set[str]:
    """Names in the first column of the tables under heading ``section`` (up to the next heading)."""
    text = DOC.read_text()
    start = text.index(section)
    end = min((text.find(h, start + len(section)) for h in ("\n## ", "\n### ") if text.find(h, start + len(section)) > 0),
              default=len(text))
    names = set()
    for line in text[start:end].splitlines():
        m = re.match(r"\| ((?:`[\w-]+`(?:, )?)+) \|", line)
        if m:
            names.update(re.findall(r"`([\w-]+)`", m.group(1)))
    return names


def test_the_page_documents_this_schema_version():
    assert f"`schema_version` {schema.SCHEMA_VERSION}" in DOC.read_text().splitlines()[0]
    assert f'"schema_version": {schema.SCHEMA_VERSION},' in DOC.read_text()  # the example document


def test_every_required_field_is_documented():
    assert set(schema.METADATA_FIELDS) | set(schema.OPTIONAL_METADATA_FIELDS) == documented_fields("## Metadata block")
    assert {"schema_version", "suite", "metadata", "results"} == documented_fields("## Document")
    records = documented_fields("## Records")
    assert set(schema.ACCURACY_FIELDS) | set(schema.DELTA_FIELDS) | set(schema.OUTCOME_FIELDS) <= records
    for suite, fields in schema.SUITE_FIELDS.items():
        assert set(fields) <= documented_fields(f"### `{suite}`"), suite


def test_every_field_written_is_documented(evaluated):
    doc = evaluated[0]
    assert set(doc["metadata"]) == documented_fields("## Metadata block")
    for suite, payload in doc["results"].items():
        assert set(payload) - {"seconds"} == documented_fields(f"### `{suite}`"), suite
    records = documented_fields("## Records")
    assert set(doc["results"]["ablation"]["delta"]) == set(schema.DELTA_FIELDS) <= records
    assert set(doc["results"]["algorithmic"]["summary"]["iid"]) == set(schema.ACCURACY_FIELDS + schema.OUTCOME_FIELDS)
    assert set(doc["results"]["algorithmic"]["tasks"]["copy"]["iid"]) == set(schema.ACCURACY_FIELDS)


def minimal(**changes):
    meta = {field: None for field in schema.METADATA_FIELDS}
    doc = schema.document("selftest", meta, {"checks": {}, "passed": True})
    doc.update(changes)
    return doc


def test_validation_accepts_this_version_and_registered_suites(tmp_path):
    for doc in (minimal(), minimal(suite="lm-eval", results={"tasks": {}})):  # lm-eval: registered elsewhere
        path = schema.write_results(tmp_path / schema.results_filename(doc["suite"]), doc)
        assert schema.read_results(path) == doc  # read_results validates: no error, nothing changed


@pytest.mark.parametrize(
    "doc, message",
    [
        ([], "not a memlab results document"),
        ({"suite": "lm"}, "not a memlab results document"),
        (minimal(schema_version=schema.SCHEMA_VERSION + 1), "is newer than this memlab supports"),
        (minimal(schema_version="1"), "invalid schema_version"),
        (minimal(metadata={"seed": 0}), "metadata lacks the fields"),
        (minimal(results={"passed": True}), "selftest results lacks the fields ['checks']"),
        (minimal(suite="all", results={"lm": {}}), "lm results lacks the fields"),
    ],
)
def test_validation_rejects_what_does_not_follow_the_schema(doc, message):
    with pytest.raises(MemlabError, match=re.escape(message)):
        schema.validate(doc)


def test_each_required_field_of_a_real_document_is_checked(evaluated):
    """Drop any one required field of a real ``all`` document: validation names it."""
    import copy

    doc = evaluated[0]
    schema.validate(doc)
    places = [("document", [], f) for f in ("suite", "metadata", "results")]
    places += [("metadata", ["metadata"], f) for f in schema.METADATA_FIELDS]
    places += [(f"{suite} results", ["results", suite], f) for suite, fields in schema.SUITE_FIELDS.items()
               for f in fields]
    for what, path, field in places:
        broken = copy.deepcopy(doc)
        parent = broken
        for key in path:
            parent = parent[key]
        del parent[field]
        with pytest.raises(MemlabError, match=re.escape(f"{what} lacks the fields ['{field}']")):
            schema.validate(broken)
    for version in (0, -1, 1.5, None):
        with pytest.raises(MemlabError, match="invalid schema_version"):
            schema.validate({**doc, "schema_version": version})
    # named here, not read from the schema's own lists: what compare and report rely on
    for section, field in [("metadata", "timestamp"), ("metadata", "git_commit"), ("lm", "loss_ci95"),
                           ("ablation", "delta"), ("longctx", "overall"), ("algorithmic", "summary")]:
        broken = copy.deepcopy(doc)
        del (broken["metadata"] if section == "metadata" else broken["results"][section])[field]
        with pytest.raises(MemlabError, match=re.escape(f"lacks the fields ['{field}']")):
            schema.validate(broken)


def test_files_are_strict_json_and_written_atomically(tmp_path):
    doc = minimal(results={"checks": {"x": {"passed": True, "value": float("inf")}}, "passed": True})
    doc = schema.document("selftest", doc["metadata"], doc["results"])
    path = schema.write_results(tmp_path / "r" / schema.results_filename("selftest"), doc)
    assert path.name == "results_selftest.json" and list(path.parent.iterdir()) == [path]
    assert json.loads(path.read_text())["results"]["checks"]["x"]["value"] is None
    assert schema.read_results(path) == json.loads(path.read_text())


def test_reading_a_missing_or_corrupt_file_is_one_clear_error(tmp_path):
    with pytest.raises(MemlabError, match="no results file"):
        schema.read_results(tmp_path / "results_lm.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MemlabError, match="corrupt results file"):
        schema.read_results(tmp_path / "bad.json")


def git(repo, *args):
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def committed_repo(repo, package, other, *tracked):
    """A git repository at ``repo`` holding memlab's ``package/__init__.py`` and a file ``other``; only
    ``tracked`` are committed.  Returns the package directory."""
    (repo / package).mkdir(parents=True)
    (repo / package / "__init__.py").write_text("")
    (repo / other).write_text("")
    git(repo, "init", "-q")
    git(repo, "add", *tracked)
    git(repo, "commit", "-qm", "work")
    return repo / package


def test_the_commit_is_memlab_s_own_not_the_working_directory_s(tmp_path, monkeypatch):
    """An installed memlab inside a user's repository had recorded the user's HEAD as its commit."""
    package = committed_repo(tmp_path / "user_repo", ".venv/memlab", "analysis.py", "analysis.py")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)
    assert provenance.source_revision() == (None, None) and provenance.git_commit() is None
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)  # no git work tree at all
    assert provenance.source_revision() == (None, None)


def test_a_memlab_checkout_records_its_commit_and_whether_its_source_was_changed(tmp_path, monkeypatch):
    package = committed_repo(tmp_path, "src/memlab", "notes.txt", ".")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)
    commit, dirty = provenance.source_revision()
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and dirty is False
    (tmp_path / "notes.txt").write_text("changed outside the package")
    assert provenance.source_revision() == (commit, False)
    (package / "__init__.py").write_text("x = 1")
    assert provenance.source_revision() == (commit, True)
