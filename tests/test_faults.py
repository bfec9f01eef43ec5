"""Records and repros under faults: a lone surrogate in a recorded name (a candidate's
tensor name) neither breaks the summary nor leaves an empty report; saving a repro copies
links as links, refuses FIFOs and devices, stops at a size limit, and holds the files its
case reaches outside the checkpoint."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conformance.records import RecordWriter
from conformance.repro import NOT_COPIED_FILE, OUTSIDE_DIR, replay_directory, save_checkpoint
from reference.contract import LoadError, LoadOptions
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
    # a file of the case outside the checkpoint comes along, where the copied link finds it
    assert os.readlink(copy / "link.safetensors") == "../outside.bin"
    assert (copy / OUTSIDE_DIR / "outside.bin").read_bytes() == b"o" * 100
    assert os.readlink(copy / "zero.safetensors") == "/dev/zero"
    assert (copy / "model.safetensors").read_bytes() == b"m" * 10
    assert not (copy / "fifo.json").exists() and not (copy / "big.bin").exists()
    assert len(left_out) == 2 and "fifo.json: not a regular file" in left_out[1] \
        and "big.bin: 1000 bytes, past the 500-byte limit" in left_out[0]
    assert (copy / NOT_COPIED_FILE).read_text().count("\n") == 2


@pytest.mark.parametrize("layout", ["index-parent-traversal", "single-file-symlink-outside",
                                    "hub-cache-sharded"])
def test_a_repro_holds_the_files_its_case_reaches_outside_the_checkpoint(tmp_path, layout):
    """A shard named `../outside.safetensors`, a file linked outside, a hub-cache snapshot
    linking into `../../blobs`: the repro copy holds those files, and the directory replay
    loads from lays them out as the case had them, so the reference says what it said."""
    from generators.hostile import HOSTILE_CASES, VALID_LAYOUTS
    from reference.loading import ReferenceLoader
    case_folder = tmp_path / "loadcheck-case"
    case_folder.mkdir()
    if layout in VALID_LAYOUTS:
        checkpoint, spec = VALID_LAYOUTS[layout](case_folder), HOSTILE_CASES[
            "index-parent-traversal"].spec
    else:
        checkpoint, spec = case_folder / "checkpoint", HOSTILE_CASES[layout].spec
        checkpoint.mkdir()
        HOSTILE_CASES[layout].write(checkpoint)

    def outcome(directory):
        try:
            return sorted(ReferenceLoader().load(str(directory), spec, LoadOptions()).state)
        except LoadError as exc:
            return type(exc).__name__

    before = outcome(checkpoint)
    assert save_checkpoint(checkpoint, tmp_path / "repro") == []
    assert (tmp_path / "repro" / OUTSIDE_DIR).is_dir()
    shutil.rmtree(case_folder)  # the case's folder is gone by the time anyone replays
    with tempfile.TemporaryDirectory(prefix="loadcheck-replay-") as scratch:
        replayed = replay_directory(tmp_path / "repro", Path(scratch))
        assert outcome(replayed) == before
    assert replay_directory(tmp_path / "plain", tmp_path / "unused") == tmp_path / "plain"


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
