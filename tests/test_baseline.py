"""Known-divergence baselines: entries match on what diverged; known divergences pass and
never mask a new one; an entry that no longer reproduces is fixed (and fails under
--baseline-strict); a baseline is written from a run's records in one step; the nightly
example database replays a failure under the repro profile; a CUDA run without CUDA fails."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from conformance.baseline import (SHIPPED, Baseline, BaselineError, Entry, Match,
                                  case_features, load_baseline)
from conformance.baseline.verdict import judge
from conformance.baseline.write import dumps, entries_from_runs
from reports.records import read_runs
from tests.mutation import ROOT, run_suite
from tests.suite_process import PytestRun, run_pytest

ZERO = "test_fp8.py::test_zero_weights_quantize_to_exact_zero"
FLOOR_MUTANT = "tests.mutants.p12_scale_floor_missing"


def _div(kind="fp8", subject="model.layers.3.self_attn.q_proj.weight", message="m", **detail):
    return {"kind": kind, "subject": subject, "message": message, "detail": detail,
            "severity": "divergence"}


def test_match_fields_patterns_and_literal_brackets():
    m = Match(kind="fp8", subject="model.layers.*.self_attn.*_proj.weight")
    assert m.matches(_div()) and not m.matches(_div(kind="tensor"))
    assert not m.matches(_div(subject="model.layers.0.mlp.up_proj.weight"))
    errors = Match(kind="error", expected_family="non_finite", found_family="ok")
    assert errors.matches(_div("error", "load", expected_family="non_finite", found_family="ok"))
    assert not errors.matches(_div("error", "load", expected_family="non_finite",
                                   found_family="exception"))
    assert Match(message=r"scale 0\b").matches(_div(message="has scale 0 here"))
    entry = Entry(id="X1", test="test_hostile.py::test_named[traversal]", matches=(m,))
    assert entry.applies_to("conformance/test_hostile.py::test_named[traversal]")
    assert not entry.applies_to("conformance/test_hostile.py::test_named[t]")  # [..] is literal
    assert Entry(id="X2", test="test_hostile.py::*", matches=(m,)).applies_to(
        "/site-packages/conformance/test_hostile.py::test_named[absolute]")


def test_split_keeps_unknown_divergences_failing():
    baseline = Baseline(Path("b.toml"), entries=[
        Entry(id="K1", test=ZERO, matches=(Match(kind="fp8", subject="*q_proj*"),))])
    known, new = baseline.split("conformance/" + ZERO, [_div(), _div(subject="x.k_proj.w")])
    assert list(known) == ["K1"] and [d["subject"] for d in new] == ["x.k_proj.w"]
    known, new = baseline.split("conformance/test_other.py::t", [_div()])
    assert not known and len(new) == 1  # entries are per test


@pytest.mark.parametrize("text, problem", [
    ("[[known]]\nid = 'A'\ntest = 't'\n", "needs at least one [[known.match]]"),
    ("[[known]]\nid = 'A'\ntest = 't'\nclass = 'maybe'\nmatch = [{kind = 'x'}]\n", "class 'maybe'"),
    ("[[known]]\nid = 'A'\ntest = 't'\nmatch = [{tensor = 'x'}]\n", "unknown match fields ['tensor']"),
    ("[[known]]\nid = 'A'\ntest = 't'\nmatch = [{message = '('}]\n", "not a regular expression"),
    ("[[known]]\nid = 'A'\ntest = 't'\nmatch = [{case = {disk = 'float64'}}]\n",
     "unknown case features ['disk']"),
    ("[[known]]\nid = 'A'\ntest = 't'\nmatch = [{finding = 'ulp'}]\n", "finding 'ulp' is not one of"),
    ("[[known]]\nid = 'A'\ntest = 't'\nmatch = [{kind = 'x'}]\n" * 2, "ids used twice: ['A']"),
    ("known = [", "not valid TOML"),
])
def test_bad_baselines_are_refused_naming_file_and_entry(tmp_path, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BaselineError, match=r"bad\.toml") as info:
        load_baseline(path)
    assert problem in str(info.value)


CASTS = "test_loading.py::test_float_casts_round_once"
FLOAT64_ROUNDING = Match(kind="tensor", finding="rounding",
                         case=(("disk_dtype", "float64"), ("dtype", "*float16")))


def test_case_and_finding_narrow_a_match(tmp_path):
    """A match about a kind of case knows a divergence only in such a case: the same 1-ULP
    tensor divergence is known on a float64 checkpoint loaded into bfloat16, new on a
    float32 one, new when the case is unknown; another finding is new everywhere."""
    from generators.cases import LoadCase
    from generators.checkpoints import CheckpointPlan
    from reference.contract import LoadOptions, ModelSpec
    spec = ModelSpec(family="llama", vocab_size=8, hidden_size=8, intermediate_size=4,
                     num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, dtype="bfloat16")
    float64, float32 = (case_features(LoadCase(CheckpointPlan(spec, disk_dtype=d), LoadOptions()))
                        for d in ("float64", "float32"))
    assert float64["disk_dtype"] == "float64" and float64["dtype"] == "bfloat16"
    rounding = dict(_div("tensor"), finding="rounding")
    assert FLOAT64_ROUNDING.matches(rounding, float64)
    assert not FLOAT64_ROUNDING.matches(rounding, float32)
    assert not FLOAT64_ROUNDING.matches(rounding)
    assert not FLOAT64_ROUNDING.matches(dict(rounding, finding="values"), float64)
    entry = Entry(id="T14", test=CASTS, matches=(FLOAT64_ROUNDING,), summary="s", seen=("v",))
    path = tmp_path / "b.toml"
    path.write_text(dumps(Baseline(path, "x", [entry])))
    assert load_baseline(path).entries == [entry]  # written and read back alike
    known, new = load_baseline(path).split("conformance/" + CASTS, [rounding], float64)
    assert list(known) == ["T14"] and not new


def test_a_case_narrowed_entry_does_not_mask_a_value_bug_of_another_case(tmp_path):
    """The shipped float64 entries' shape (a 1-ULP tensor divergence of a float64 checkpoint
    loaded into bfloat16 / float16) gates the float64 double-rounding bug; a loader that also
    truncates float32 -> bfloat16 (1 ULP too, the same test) still fails on a float32 case."""
    baseline = tmp_path / "b.toml"
    baseline.write_text(dumps(Baseline(baseline, "x", [Entry(
        id="T14", test=CASTS, matches=(FLOAT64_ROUNDING,), summary="s", seen=("v",))])))
    (tmp_path / "two_casts.py").write_text(
        "from tests.mutants.p2_float64_rounds_twice import RoundsTwice\n"
        "from tests.mutants.p2_bf16_by_truncation import Truncates\n"
        "class Both(RoundsTwice, Truncates):\n    pass\n"
        "loader = Both('two_casts')\n")
    known = run_suite("tests.mutants.p2_float64_rounds_twice", f"conformance/{CASTS}",
                      "--baseline", str(baseline), records=tmp_path / "r0")
    assert known.returncode == 0 and "known: T14" in known.output, known.output[-2000:]
    both = run_suite("two_casts", f"conformance/{CASTS}", "--baseline", str(baseline),
                     records=tmp_path / "r1", pythonpath=tmp_path)
    assert both.returncode == 1, both.output[-2000:]
    final = [r for r in both.records_of(CASTS.split("::")[1]) if r["stage"] == "final"]
    assert final and all("disk=float32" in r["case"] for r in final), [r["case"] for r in final]


def test_verdict_known_fixed_unverified_not_run():
    entries = [Entry(id=i, test=t, matches=(Match(kind="fp8"),)) for i, t in
               [("A", "t.py::seen"), ("B", "t.py::passes"), ("C", "t.py::fails"),
                ("D", "t.py::skipped"), ("E", "t.py::absent")]]
    verdict = judge(Baseline(Path("b.toml"), entries=entries),
                    {"c/t.py::seen": "passed", "c/t.py::passes": "passed",
                     "c/t.py::fails": "failed", "c/t.py::skipped": "skipped"},
                    [("A", "c/t.py::seen")])
    assert verdict.known == {"A": ["c/t.py::seen"]} and verdict.fixed == ["B"]
    assert verdict.unverified == ["C"] and verdict.not_run == ["D", "E"]
    assert verdict.new == ["c/t.py::fails"]


def _records(directory: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(directory.glob("records-*.jsonl"))
            for line in p.read_text().splitlines() if line.strip()]


def test_baseline_round_trip_on_a_mutant(tmp_path):
    """Adopt in one run (--baseline-write), then gate: known passes; without its entry the
    bug fails as new; an entry that never reproduces is reported fixed and fails only under
    --baseline-strict."""
    first = run_suite(FLOOR_MUTANT, f"conformance/{ZERO}", records=tmp_path / "r0")
    assert first.returncode == 1, first.output[-2000:]
    baseline = tmp_path / "mutant.toml"
    adopt = run_suite(FLOOR_MUTANT, f"conformance/{ZERO}", "--baseline-write", str(baseline),
                      records=tmp_path / "r1")
    assert adopt.returncode == 0 and "1 new entry (P1)" in adopt.output, adopt.output[-2000:]
    (entry,) = load_baseline(baseline).entries
    assert entry.test == ZERO and all(m.kind == "fp8" for m in entry.matches)
    assert entry.seen == (f"{FLOOR_MUTANT} 0.1.0 / torch {torch.__version__} / cpu",)

    gated = run_suite(FLOOR_MUTANT, f"conformance/{ZERO}", "--baseline", str(baseline),
                      records=tmp_path / "r2")
    assert gated.returncode == 0, gated.output[-2000:]
    assert "known entry seen" in gated.output and "known: P1" in gated.output
    (verdict,) = [r for r in _records(tmp_path / "r2") if r["type"] == "baseline"]
    assert verdict["known"] == {"P1": [f"conformance/{ZERO}"]} and not verdict["fixed"]

    # An entry for another kind of divergence only: the floor bug is new again.
    other = Baseline(baseline, "x", [Entry(id="O1", test=ZERO, matches=(Match(kind="bytes"),))])
    baseline.write_text(dumps(other))
    fails = run_suite(FLOOR_MUTANT, f"conformance/{ZERO}", "--baseline", str(baseline),
                      records=tmp_path / "r3")
    assert fails.returncode == 1 and re.search("all-zero weight must quantize|weight_scale: expected", fails.output)
    assert "--baseline=" in fails.output  # the re-run line keeps the baseline

    # The reference passes; the mutant's entry no longer reproduces there: fixed.
    baseline.write_text(dumps(Baseline(baseline, "x", [entry])))
    fixed = run_suite("reference", f"conformance/{ZERO}", "--baseline", str(baseline),
                      records=tmp_path / "r4")
    assert fixed.returncode == 0 and "fixed: P1" in fixed.output, fixed.output[-2000:]
    strict = run_suite("reference", f"conformance/{ZERO}", "--baseline", str(baseline),
                       "--baseline-strict", records=tmp_path / "r5")
    assert strict.returncode == 1 and "remove it from the baseline" in strict.output


def test_a_known_bug_never_masks_a_new_one(tmp_path):
    """Two bugs in one property (an unwritten up half; bf16 by truncation). Without a
    baseline the search stops at the one it meets first; with that one known, the other
    still fails the test, and its records list only it."""
    (tmp_path / "two_bugs.py").write_text(
        "from tests.mutants.p2_gate_up_second_half_unwritten import UpHalfUnwritten\n"
        "from tests.mutants.p2_bf16_by_truncation import Truncates\n"
        "class Both(UpHalfUnwritten, Truncates):\n    pass\n"
        "loader = Both('two_bugs')\n")
    bugs = {"unwritten": Match(subject="*up_proj*", message="poison"),
            "truncation": Match(message=r"(?s)\A(?!.*poison).*torch\.bfloat16")}
    test = "conformance/test_loading.py::test_load_matches_reference"

    def final(run):
        return [d for r in run.records if r["type"] == "divergence" and r["stage"] == "final"
                for d in r["divergences"]]

    plain = run_suite("two_bugs", test, records=tmp_path / "r0", pythonpath=tmp_path)
    assert plain.returncode == 1, plain.output[-2000:]
    (first,) = {name for name, m in bugs.items() if any(m.matches(d) for d in final(plain))}
    (other,) = set(bugs) - {first}
    baseline = tmp_path / "b.toml"
    baseline.write_text(dumps(Baseline(baseline, "two_bugs", [Entry(
        id="B1", test="test_loading.py::test_load_matches_reference",
        matches=(bugs[first],))])))
    gated = run_suite("two_bugs", test, "--baseline", str(baseline), records=tmp_path / "r",
                      pythonpath=tmp_path)
    assert gated.returncode == 1, gated.output[-2000:]
    assert final(gated) and all(bugs[other].matches(d) for d in final(gated)), final(gated)
    assert any(r["type"] == "known" and r["entry"] == "B1" for r in gated.records)


def test_entries_from_runs_skip_what_is_known(tmp_path):
    lines = [{"schema": 1, "type": "run", "run_id": "r", "loader": "x", "loader_version": "1",
              "device": "cpu", "torch": "2.13.0"},
             {"schema": 1, "type": "divergence", "stage": "final", "test": f"conformance/{ZERO}",
              "divergences": [_div(subject="model.layers.0.self_attn.q_proj.weight"),
                              _div(subject="model.layers.1.mlp.down_proj.weight"),
                              _div("error", "load", expected_family="ok", found_family="crash")]}]
    (tmp_path / "records-r-main.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
    runs = read_runs([tmp_path])
    (entry,) = entries_from_runs(runs, Baseline(tmp_path / "b.toml", "x"))
    assert entry.id == "X1" and entry.seen == ("x 1 / torch 2.13.0 / cpu",)
    assert {m.subject for m in entry.matches} == {"model.layers.*.*_proj.weight", "load"}
    assert entries_from_runs(runs, Baseline(tmp_path / "b.toml", "x", [entry])) == []


def test_written_entries_carry_the_narrowest_case_of_their_examples(tmp_path):
    """--baseline-write narrows each new match to what its recorded examples share: a
    float64 rounding met in a bfloat16 and a float16 llama case (tp 1 and 2) is written
    as disk_dtype=float64, dtype=*float16, family=llama; the entry knows those examples,
    not the same divergence in a float32 case. A divergence recorded without features
    (older records) gets no case."""
    def features(dtype, tp_size, disk_dtype="float64"):
        return {"disk_dtype": disk_dtype, "dtype": dtype, "family": "llama",
                "tp_size": tp_size, "fp8_checkpoint": "none", "quantize": "none"}
    rounding = dict(_div("tensor", "model.norm.weight"), finding="rounding")
    crash = _div("error", "load", expected_family="ok", found_family="crash")
    record = {"schema": 2, "type": "divergence", "stage": "final", "test": f"conformance/{CASTS}"}
    lines = [{"schema": 2, "type": "run", "run_id": "r", "loader": "x", "loader_version": "1",
              "device": "cpu", "torch": "2.13.0"},
             dict(record, divergences=[rounding], features=features("bfloat16", "1")),
             dict(record, divergences=[rounding], features=features("float16", "2")),
             dict(record, divergences=[crash])]
    (tmp_path / "records-r-main.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
    (entry,) = entries_from_runs(read_runs([tmp_path]), Baseline(tmp_path / "b.toml", "x"))
    by_kind = {m.kind: m for m in entry.matches}
    assert dict(by_kind["tensor"].case) == {"disk_dtype": "float64", "dtype": "*float16",
                                            "family": "llama", "fp8_checkpoint": "none",
                                            "quantize": "none"}
    assert by_kind["error"].case is None
    path = tmp_path / "b.toml"
    path.write_text(dumps(Baseline(path, "x", [entry])))
    written = load_baseline(path)
    assert written.entries == [entry]
    for dtype, tp_size in (("bfloat16", "1"), ("float16", "2"), ("float16", "4")):
        assert written.split(f"conformance/{CASTS}", [rounding], features(dtype, tp_size))[1] == []
    float32 = features("bfloat16", "1", disk_dtype="float32")
    assert written.split(f"conformance/{CASTS}", [rounding], float32)[1] == [rounding]


def test_nightly_failure_replays_first_under_repro(tmp_path):
    """A failure found by a nightly run lands in the example database, and the repro
    profile (no generate phase) finds it there; an empty database replays nothing."""
    db = tmp_path / "db"

    def run(profile: str, records: str, database: Path = db) -> PytestRun:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LOADCHECK_EXAMPLE_DB": str(database)}
        env.pop("PYTEST_XDIST_WORKER", None)
        return run_pytest(
            [f"conformance/{ZERO}", "--loader", FLOOR_MUTANT,
             "-p", "no:cacheprovider", "-q", f"--hypothesis-profile={profile}",
             "--hypothesis-show-statistics", "--records", str(tmp_path / records)],
            cwd=ROOT, env=env, timeout=600)

    nightly = run("nightly", "n")
    assert nightly.returncode == 1 and "--hypothesis-seed=" in nightly.stdout
    assert any(db.rglob("*")), "the nightly run saved nothing in the example database"
    replay = run("repro", "r")
    assert replay.returncode == 1, replay.stdout[-2000:]
    assert "during reuse phase" in replay.stdout and "generate phase" not in replay.stdout
    case = lambda d: {r["case"] for r in _records(tmp_path / d) if r.get("stage") == "final"}
    assert case("r") == case("n")
    empty = run("repro", "e", tmp_path / "empty-db")
    assert empty.returncode == 0, empty.stdout[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_a_gpu_fails_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = run_pytest(["conformance", "--device", "cuda", "-p", "no:cacheprovider",
                       "--records", str(tmp_path)], cwd=ROOT, env=env, timeout=300)
    errors = [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("ERROR")]
    assert proc.returncode not in (0, 5) and len(errors) == 1, proc.stdout + proc.stderr
    assert "no CUDA device on this machine" in errors[0]


def test_shipped_baselines_load_and_have_reviewed_fields():
    shipped = sorted(SHIPPED.glob("*.toml"))
    assert {p.stem for p in shipped} >= {"torchao", "torchao-row", "transformers", "accelerate",
                                         "vllm", "vllm-fp8"}
    for path in shipped:
        baseline = load_baseline(path)
        assert baseline.loader and baseline.entries, path
        for entry in baseline.entries:
            assert entry.summary and entry.seen, f"{path}: {entry.id} lacks a summary or versions"


def test_findings_pages_show_the_shipped_baselines():
    """One source of truth: each findings page's baseline table is generated from the
    shipped baseline (`python -m conformance.baseline findings docs/findings/*.md`)."""
    from conformance.baseline.write import update_findings
    baselines = {p.name: load_baseline(p) for p in sorted(SHIPPED.glob("*.toml"))}
    placed = {}
    for doc in sorted((ROOT / "docs" / "findings").glob("*.md")):
        text = doc.read_text()
        regenerated, found = update_findings(text, baselines)
        assert regenerated == text, (f"{doc.name}: its baseline table is stale; run python -m "
                                     f"conformance.baseline findings docs/findings/*.md")
        placed.update({name: doc.name for name in found})
    assert set(placed) == set(baselines), f"baselines on no findings page: {set(baselines) - set(placed)}"


def test_a_known_error_does_not_crash_the_property_that_follows_it(tmp_path):
    """fail_on returns for a known divergence: a property that cannot go on after an error
    (here: a TP rank that raises) must stop there, not crash on the missing result."""
    (tmp_path / "rank_raises.py").write_text(
        "from reference.contract import ShapeMismatchError\n"
        "from tests.mutants import Mutant\n"
        "class RankRaises(Mutant):\n"
        "    def load(self, checkpoint, spec, options):\n"
        "        if options.tp_rank == 1:\n"
        "            raise ShapeMismatchError('rank 1 refuses', subject='x')\n"
        "        return super().load(checkpoint, spec, options)\n"
        "loader = RankRaises('rank_raises')\n")
    baseline = tmp_path / "b.toml"
    baseline.write_text(dumps(Baseline(baseline, "rank_raises", [Entry(
        id="R1", test="test_loading.py::test_gathered_ranks_equal_tp1",
        matches=(Match(kind="error", subject="rank *"),))])))
    proc = run_suite("rank_raises", "conformance/test_loading.py::test_gathered_ranks_equal_tp1",
                     "--baseline", str(baseline), records=tmp_path / "r", pythonpath=tmp_path)
    assert proc.returncode == 0 and "known: R1" in proc.output, proc.output[-3000:]
