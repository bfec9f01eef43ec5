"""The record schema has one definition: every kind of divergence the suite makes
round-trips through its JSON form, old (schema 1) lines are read, bad lines are refused
naming the file and line, and the facts of a divergence are fields, not message text."""

from __future__ import annotations

import json

import pytest
import torch

from conformance.compare import Outcome, Where, compare_outcomes, compare_tensor, error_divergence
from conformance.fp8_compare import fp8_divergences
from conformance.survival import CandidateCrashed, CandidateHung
from conformance.tensor_diff import diff_tensors
from conformance.tp_compare import gathered_where, same_slice_divergences
from reference.contract import LoadError, LoadResult, ModelSpec, UnsafeCheckpointError
from reference.fp8 import FP8, scale_name
from reports.records import read_records
from reports.schema import (KINDS, SCHEMA_VERSION, Divergence, DivergenceRecord, SchemaError,
                            Source, TPSlice, read_line)

W = "model.layers.0.self_attn.k_proj.weight"


def _error(family: str) -> LoadError:
    return UnsafeCheckpointError(f"a {family} error", subject="model.safetensors")


def _one_of_each_kind() -> list[Divergence]:
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    b = a.clone()
    b[1, 2] = 99.0
    poisoned = a.clone()
    poisoned[2].view(torch.int32).fill_(-1)
    state = {W: a}
    out = [
        compare_tensor(W, a, b, Where(Source("model.layers.0.self_attn.qkv_proj.weight", [4, 7]),
                                      TPSlice(1, 2, 0, 3, 6))),
        compare_tensor(W, a, poisoned),
        compare_tensor(W, a, a.double()),
        compare_tensor(W, a, a[:2]),
        compare_tensor(W, a, torch.empty(3, 4, device="meta")),
    ]
    out += compare_outcomes(Outcome(result=LoadResult(state=state)),
                            Outcome(result=LoadResult(state={"x": a})),
                            name_sets=(), device="cpu")
    out.append(error_divergence(Outcome(error=_error("unsafe_checkpoint")), Outcome(result=None)))
    out.append(error_divergence(Outcome(result=None), Outcome(error=CandidateCrashed("died"))))
    out.append(error_divergence(Outcome(result=None), Outcome(error=CandidateHung("slow"))))
    out.append(error_divergence(Outcome(result=None), Outcome(error=KeyError("k"))))
    codes = (a / 12 * 448).to(FP8)
    expected = {W: codes, scale_name(W): torch.tensor(0.5)}
    found = {W: codes, scale_name(W): torch.tensor(0.25)}
    out.append(fp8_divergences(expected, found, W))
    spec = ModelSpec(family="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
                     num_layers=1, num_heads=2, num_kv_heads=2, head_dim=4)
    q = "model.layers.0.self_attn.q_proj.weight"
    ref = [{q: torch.full((4, 8), float(r))} for r in range(2)]
    out += same_slice_divergences(spec, [ref[0], ref[0]], ref)
    out += [Divergence(kind, "x", f"x: {kind}") for kind in KINDS]
    return out


def test_every_kind_of_divergence_round_trips_through_json():
    divergences = _one_of_each_kind()
    assert {d.kind for d in divergences} >= set(KINDS)
    for divergence in divergences:
        text = json.dumps(divergence.to_json())
        assert Divergence.from_json(json.loads(text)) == divergence, divergence.kind
    record = DivergenceRecord(property="P2 coverage", test="t.py::t", loader="l", stage="final",
                              severity="critical", case="c", rerun="r", signature="s",
                              divergences=divergences)
    line = json.loads(json.dumps(record.to_json()))
    assert line["schema"] == SCHEMA_VERSION and line["property_id"] == "P2"
    back = read_line(line, "f:1")
    assert [Divergence.from_json(d) for d in back["divergences"]] == divergences


def test_the_facts_are_fields():
    value, poison, dtype, shape, meta, missing, extra, accepted, crash, hang, exception, \
        scale, same = _one_of_each_kind()[:13]
    assert (value.finding, value.tensor, value.counts.mismatched, value.first_index) == (
        "values", W, 1, [1, 2])
    assert value.source.rows == [4, 7] and value.tp.rank == 1 and value.slot.index == 1
    assert value.slot.fused == "model.layers.0.self_attn.qkv_proj"
    assert "rows 4:7 of checkpoint key" in value.message  # rendered from the fields
    assert poison.finding == "unwritten" and poison.counts.poisoned == 4
    assert poison.map.poison is not None and poison.map.shape == [3, 4]
    assert [dtype.finding, shape.finding, meta.finding, missing.finding, extra.finding] == [
        "dtype", "shape", "meta", "missing", "extra"]
    assert (accepted.finding, accepted.severity) == ("accepted", "critical")
    assert (crash.kind, crash.severity, hang.kind, hang.severity) == ("crash", "crash", "hang", "hang")
    assert (exception.finding, exception.severity, exception.found_family) == (
        "exception", "crash", "exception")
    assert scale.finding == "scale" and scale.headline.startswith(
        "model.layers.0.self_attn.k_proj (slot 1 (k_proj)") and "expected 0.5, found 0.25" in \
        scale.headline and scale.diffs.dequantized_max_abs > 0
    assert same.finding == "same_slice" and "every TP rank holds the same slice" in same.headline


def test_ulps_tell_rounding_from_garbage_and_the_map_shows_where():
    a = torch.linspace(1, 2, 64, dtype=torch.bfloat16).reshape(8, 8)
    one_ulp = (a.view(torch.int16) + 1).view(torch.bfloat16)
    rounding = compare_tensor("w", a, one_ulp)
    assert rounding.finding == "rounding" and rounding.diffs.ulp_histogram == [["1", 64]]
    garbage = a.clone()
    garbage[4:] = -1000
    wrong = compare_tensor("w", a, garbage, gathered_where(
        ModelSpec(family="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
                  num_layers=1, num_heads=2, num_kv_heads=2, head_dim=4),
        "model.layers.0.self_attn.q_proj.weight", 2))
    assert wrong.finding == "values" and ["sign", 32] in wrong.diffs.ulp_histogram
    assert wrong.map.cells[:4] == [[0.0] * 8] * 4 and wrong.map.cells[4:] == [[1.0] * 8] * 4
    assert [(m.at, m.label) for m in wrong.map.row_marks] == [(4, "rank 1")]
    assert diff_tensors(a, a.clone()) is None


def test_schema_1_lines_are_read_and_bad_lines_refused(tmp_path):
    old = {"schema": 1, "type": "divergence", "test": "t", "property": "P6 tracking",
           "divergences": [{"kind": "error", "subject": "load", "message": "errors differ: a\nb",
                            "detail": {"expected_family": "ok", "found_family": "exception"},
                            "severity": "divergence"}]}
    path = tmp_path / "records-x-main.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (record,) = read_records([path]).divergences
    assert record["headline"] == "errors differ: a" and record["property_id"] == "P6"
    assert record["divergences"][0]["finding"] == "refused"
    assert record["divergences"][0]["found_family"] == "exception"
    with pytest.raises(SchemaError, match="f:3: .*kind 'bogus'"):
        read_line({"schema": 2, "type": "known", "divergences": [{"kind": "bogus",
                                                                  "subject": "x"}]}, "f:3")
    path.write_text(json.dumps({"schema": 9, "type": "run"}) + "\n")
    with pytest.raises(ValueError, match=r"records-x-main\.jsonl:1: record schema 9"):
        read_records([path])


def test_the_text_summary_lists_the_worst_first_across_runs(tmp_path):
    from reports.records import read_runs
    from reports.summary import text_summary
    for loader, severity in (("a", "divergence"), ("b", "critical"), ("c", "hang")):
        lines = [{"schema": 2, "type": "run", "run_id": loader, "loader": loader},
                 {"schema": 2, "type": "divergence", "run_id": loader, "test": f"t_{loader}",
                  "property": "P2 coverage", "loader": loader, "stage": "final",
                  "severity": severity, "headline": f"{loader} headline",
                  "divergences": [{"kind": "error", "subject": "load", "severity": severity}]}]
        (tmp_path / loader).mkdir()
        (tmp_path / loader / f"records-{loader}-main.jsonl").write_text(
            "\n".join(json.dumps(line) for line in lines) + "\n")
    text = text_summary(read_runs([tmp_path / n for n in "abc"]))
    order = [text.index(f"{n} headline") for n in "bca"]
    assert order == sorted(order), text
