"""Records and repros under faults: a lone surrogate in a recorded name (a candidate's
tensor name) neither breaks the summary nor leaves an empty report; saving a repro copies
links as links, refuses FIFOs and devices, and stops at a size limit."""

from __future__ import annotations

import os

from conformance.records import RecordWriter
from conformance.repro import NOT_COPIED_FILE, save_checkpoint
from reports.__main__ import main as reports_main
from reports.records import read_runs
from reports.summary import text_summary


def test_a_lone_surrogate_in_a_record_is_escaped_in_summary_and_report(tmp_path, capsys):
    writer = RecordWriter(tmp_path, "main", "20261130T000000-aaaaaa")
    writer.write({"type": "run", "loader": "x", "device": "cpu", "torch": "2.13.0"})
    writer.write({"type": "divergence", "stage": "final", "test": "t::a", "loader": "x",
                  "severity": "divergence", "property": "P2 coverage",
                  "divergences": [{"kind": "absent", "subject": "model.\udc80",
                                   "message": "model.\udc80: in the candidate's result"}]})
    writer.write({"type": "end", "exitstatus": 1, "tests": 1})
    assert "model.\\udc80" in text_summary(read_runs([tmp_path]))
    report = tmp_path / "report.html"
    assert reports_main(["build", str(tmp_path), "-o", str(report)]) == 0
    assert "model.\\udc80" in report.read_text(encoding="utf-8")


def test_a_repro_copy_keeps_links_refuses_special_files_and_stops_at_its_limit(tmp_path):
    source, outside = tmp_path / "checkpoint", tmp_path / "outside.bin"
    source.mkdir()
    outside.write_bytes(b"o" * 100)
    (source / "model.safetensors").write_bytes(b"m" * 10)
    (source / "big.bin").write_bytes(b"b" * 1000)
    os.symlink(outside, source / "link.safetensors")
    os.symlink("/dev/zero", source / "zero.safetensors")
    os.mkfifo(source / "fifo.json")
    left_out = save_checkpoint(source, tmp_path / "repro", limit=500)
    copy = tmp_path / "repro"
    assert os.readlink(copy / "link.safetensors") == str(outside)
    assert os.readlink(copy / "zero.safetensors") == "/dev/zero"
    assert (copy / "model.safetensors").read_bytes() == b"m" * 10
    assert not (copy / "fifo.json").exists() and not (copy / "big.bin").exists()
    assert len(left_out) == 2 and "fifo.json: not a regular file" in left_out[1] \
        and "big.bin: 1000 bytes, past the 500-byte limit" in left_out[0]
    assert (copy / NOT_COPIED_FILE).read_text().count("\n") == 2


def test_a_torn_last_line_of_a_killed_run_leaves_the_directory_readable(tmp_path):
    """Runs never share a file, so another run's appends never follow a torn line."""
    killed = RecordWriter(tmp_path, "gw0", "20261130T000000-aaaaaa")
    killed.write({"type": "run", "loader": "a", "device": "cpu", "torch": "2.13.0"})
    with open(killed.path, "a") as f:
        f.write('{"schema": 1, "type": "outcome", "te')  # killed mid-write
    later = RecordWriter(tmp_path, "gw0", "20261130T000001-bbbbbb")
    later.write({"type": "run", "loader": "b", "device": "cpu", "torch": "2.13.0"})
    later.write({"type": "end", "exitstatus": 0, "tests": 0})
    assert killed.path != later.path
    runs = {r.loader: r for r in read_runs([tmp_path])}
    assert runs["a"].complete is False and runs["b"].complete is True
