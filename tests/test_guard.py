"""A candidate cannot change what it is judged by: a write into its checkpoint is critical
and does not move the expected result, a changed working directory or default dtype is
reported and undone, and a rebound comparison function is critical and put back. The
candidates are in tests/misbehaving.py."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conformance.guard import CheckpointFingerprint, guarded_call
from reports.records import read_runs
from tests.mutation import run_suite


@pytest.mark.parametrize("kind, kind_of_divergence, severity, says", [
    ("writes_checkpoint", "checkpoint", "critical", "wrote into its checkpoint"),
    ("truncates_checkpoint", "checkpoint", "critical", "changed size"),
    ("changes_cwd", "global_state", "divergence", "changed the working directory"),
    ("sets_default_dtype", "global_state", "divergence", "default dtype at torch.float64"),
    ("patches_judge", "judge", "critical", "rebound conformance.compare.compare_tensor"),
    ("closes_stdout", "global_state", "divergence", "closed sys.stdout"),
])
def test_a_candidate_that_changes_what_judges_it_is_reported(tmp_path, kind,
                                                             kind_of_divergence, severity, says):
    run = run_suite(f"tests.misbehaving:{kind}", "conformance/test_tying.py",
                    "conformance/test_sharding.py", records=tmp_path)
    assert run.returncode == 1, run.output[-3000:]
    (result,) = read_runs([tmp_path])  # every record where the run began, cwd or not
    assert result.complete, run.output[-2000:]
    items = [d for r in result.divergences for d in r["divergences"]]
    found = [d for d in items if d["kind"] == kind_of_divergence]
    assert found and found[0]["severity"] == severity and says in found[0]["message"], \
        json.dumps(items[:3], indent=1)[:3000]
    if kind in ("writes_checkpoint", "truncates_checkpoint", "changes_cwd",
                "sets_default_dtype", "closes_stdout"):
        # the candidate's own result is right: the expected result did not follow its write
        assert {d["kind"] for d in items} == {kind_of_divergence}, {d["kind"] for d in items}


@pytest.mark.parametrize("kind", ["sets_default_dtype_on_reload",
                                  "sets_default_dtype_on_second_reload"])
def test_what_a_reload_does_to_the_process_is_reported(tmp_path, kind):
    """Side effects of calls no outcome comparison covers reach the example's record too: a
    reload's (they were undone, but reported only for loads), also when no fail_on follows
    the call in its example (a second reload that raised: they went to a later example's
    record, and replaying the shrunk example did not fail)."""
    run = run_suite(f"tests.misbehaving:{kind}",
                    "conformance/test_reload.py::test_reload_equals_fresh_load", records=tmp_path)
    assert run.returncode == 1, run.output[-3000:]
    (result,) = read_runs([tmp_path])
    assert result.complete and [r["type"] for r in result.divergences] == ["divergence"], \
        json.dumps(result.divergences)[:3000]
    items = [d for r in result.divergences for d in r["divergences"]]
    assert {d["kind"] for d in items} == {"global_state"}, json.dumps(items[:3])[:3000]
    assert "default dtype at torch.float64" in items[0]["message"]
    assert "Flaky" not in run.output, run.output[-3000:]


def test_random_state_is_restored_without_a_report():
    torch.manual_seed(1)
    random.seed(1)
    want_torch, want_python = torch.rand(3), random.random()
    torch.manual_seed(1)
    random.seed(1)
    with guarded_call(None) as effects:
        torch.manual_seed(99)
        random.seed(99)
        torch.rand(100)
    assert effects == []
    assert torch.equal(torch.rand(3), want_torch) and random.random() == want_python


def test_a_new_file_is_tolerated_and_a_removed_one_is_not(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x" * 16)
    fingerprint = CheckpointFingerprint(tmp_path)
    (tmp_path / "cache.bin").write_bytes(b"y")
    assert fingerprint.divergences() == []
    (tmp_path / "a.safetensors").unlink()
    (divergence,) = fingerprint.divergences()
    assert divergence.severity == "critical" and "a.safetensors was removed" in divergence.message


def test_a_rebound_method_of_the_reference_is_reported_and_put_back():
    """`ReferenceLoader.map_key = ...` (tests.misbehaving:patches_map_key) changes a class, not
    a module: in one process the reference would then share the candidate's bug."""
    from conformance.guard import JudgeSnapshot
    from reference.loading import ReferenceLoader
    original = ReferenceLoader.map_key
    judge = JudgeSnapshot()
    try:
        ReferenceLoader.map_key = lambda self, table, key: None
        assert judge.restore() == ["reference.loading.ReferenceLoader.map_key"]
        assert ReferenceLoader.map_key is original
        ReferenceLoader.map_key.__code__ = (lambda self, table, key: None).__code__
        assert judge.restore() == ["reference.loading.ReferenceLoader.map_key.__code__"]
        assert ReferenceLoader.map_key is original
        assert judge.restore() == []
    finally:
        ReferenceLoader.map_key = original
