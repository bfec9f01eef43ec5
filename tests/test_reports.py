"""reports/ reads only the records: a summary of a mutant's run names the property, the
tensor and the re-run line; bad records are refused with file and line."""

from __future__ import annotations

import json

import pytest

from reports.__main__ import summary
from reports.records import read_records
from tests.mutation import run_suite


def test_summary_of_a_mutant_run_names_tensor_and_rerun(tmp_path):
    run_suite("tests.mutants.p2_gate_up_second_half_unwritten",
              "conformance/test_loading.py::test_load_matches_reference", records=tmp_path)
    text = summary([str(tmp_path)])
    assert "P2 coverage" in text and "up_proj" in text, text
    assert "-m pytest conformance/test_loading.py::test_load_matches_reference" in text
    assert "checkpoint: " in text


def test_truncated_last_line_is_skipped_but_garbage_is_refused(tmp_path):
    good = json.dumps({"schema": 1, "type": "run", "loader": "x"})
    (tmp_path / "records-main.jsonl").write_text(good + "\n" + '{"schema": 1, "ty')
    assert len(read_records([tmp_path]).runs) == 1
    (tmp_path / "records-main.jsonl").write_text("nonsense\n" + good + "\n")
    with pytest.raises(ValueError, match="records-main.jsonl:1: not a JSON record"):
        read_records([tmp_path])
    (tmp_path / "records-main.jsonl").write_text(json.dumps({"schema": 99}) + "\n")
    with pytest.raises(ValueError, match="schema 99"):
        read_records([tmp_path])


def test_a_failure_shows_once_shrunk_or_as_first_found_when_the_run_was_killed():
    from reports.records import final_divergences
    first = {"type": "divergence", "stage": "first", "test": "t::a"}
    final = {"type": "divergence", "stage": "final", "test": "t::a"}
    killed = {"type": "divergence", "stage": "first", "test": "t::b"}
    assert final_divergences([first, final, killed]) == [final, killed]
