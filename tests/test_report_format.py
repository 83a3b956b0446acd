"""docs/report-format.md documents every field of the records the reports are made of."""
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from edgedistill import records

DOC = Path(__file__).resolve().parent.parent / "docs" / "report-format.md"


def _documented() -> set[str]:
    return set(re.findall(r"^\| `([^`]+)`", DOC.read_text(), re.M)) | set(
        k.strip("` ") for line in DOC.read_text().splitlines() if line.startswith("| `")
        for k in line.split("|")[1].split(","))


@pytest.mark.parametrize("cls", [records.BenchRecord, records.Artifact, records.ExportResult])
def test_every_record_field_is_documented(cls):
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in _documented()
               and f.name not in ("verdict", "files", "verified_at", "earlier_run",
                                  "model_dir", "out_dir")]
    # Artifact/ExportResult fields under other JSON names: verdict -> parity, files /
    # verified_at / earlier_run -> verified, model_dir -> model, out_dir -> out
    assert missing == [], f"document {missing} in {DOC}"


def test_every_timing_key_is_documented():
    assert [k for k in records.TIMING_KEYS if k not in _documented()] == []


def test_every_json_key_of_an_artifact_row_is_documented(tmp_path):
    from edgedistill.records import Artifact, Verdict
    art = Artifact(tmp_path / "m.gguf", "gguf", "q8_0", Verdict("passed", {"kl": 0.0}))
    assert [k for k in art.to_dict() if k not in _documented()] == []


def test_every_key_of_a_built_report_is_documented(tmp_path):
    import json

    from test_report import _npu_graph, _timed
    from edgedistill.report import build_report

    (tmp_path / "bench.json").write_text(json.dumps([_timed("student", "q8_0", 9.0, 3.0),
                                                     _npu_graph("teacher")]))
    doc = build_report(tmp_path)
    assert [k for k in doc if k not in _documented()] == []
    for row in doc["artifacts"]:
        assert [k for k in row if k not in _documented()] == []
        assert [k for k in row["bench"] if k not in _documented() | {"htp"}] == []


def test_the_docstrings_of_bench_record_are_the_documented_fields():
    """The dataclass's own field docstrings (what a reader of records.py sees) name the same
    fields as the page."""
    tree = ast.parse(Path(records.__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BenchRecord")
    fields = [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)]
    assert fields == [f.name for f in dataclasses.fields(records.BenchRecord)]
