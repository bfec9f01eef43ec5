"""Records per run: each run has its own id and files; a new run of a cell (loader, device,
torch) replaces that cell's earlier records and repro checkpoints, and leaves other cells'."""

from __future__ import annotations

import json

from conformance.records import RecordWriter, new_run_id, replace_cell
from reports.records import read_runs


def _run(directory, run_id, loader="x", device="cpu", torch="2.13.0", divergences=1):
    writer = RecordWriter(directory, "main", run_id)
    writer.write({"type": "run", "loader": loader, "device": device, "torch": torch})
    for i in range(divergences):
        writer.write({"type": "divergence", "stage": "final", "test": f"t::{i}", "loader": loader,
                      "divergences": []})
    (writer.repro_directory / "t").mkdir(parents=True)
    return writer


def test_a_new_run_replaces_its_cell_and_keeps_the_others(tmp_path):
    old = _run(tmp_path, "20260101T000000-aaaaaa", divergences=3)
    other = _run(tmp_path, "20260101T000000-bbbbbb", device="cuda")
    legacy = tmp_path / "records-gw0.jsonl"  # a file of the days before run ids
    legacy.write_text(json.dumps({"schema": 1, "type": "run", "loader": "x", "device": "cpu",
                                  "torch": "2.13.0"}) + "\n")
    new_id = new_run_id()
    removed = replace_cell(tmp_path, {"loader": "x", "device": "cpu", "torch": "2.13.0"}, new_id)
    assert removed == ["20260101T000000-aaaaaa", "unnamed"]
    assert not old.path.exists() and not old.repro_directory.exists() and not legacy.exists()
    assert other.path.exists() and other.repro_directory.exists()
    _run(tmp_path, new_id, divergences=0)
    runs = {r.meta["run_id"]: r for r in read_runs([tmp_path])}
    assert set(runs) == {new_id, "20260101T000000-bbbbbb"}
    assert runs[new_id].divergences == [] and runs[new_id].complete is False  # no end line yet


def test_two_runs_in_one_directory_stay_apart(tmp_path):
    a = _run(tmp_path, "20260101T000000-aaaaaa", loader="a")
    b = _run(tmp_path, "20260101T000001-bbbbbb", loader="b", divergences=2)
    assert a.path != b.path
    runs = {r.loader: r for r in read_runs([tmp_path])}
    assert len(runs["a"].divergences) == 1 and len(runs["b"].divergences) == 2
