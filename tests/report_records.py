"""Records for the report's tests, built from reports.schema's dataclasses as the suite
writes them (schema 2): a never-written fused half, a fused q/k/v with two wrong slots, a TP
rank holding another's slice, an FP8 scale, a rounding difference, a critical error, a name
set, a byte count, a crash with one unbroken 600-character line, a very long tensor name."""

from __future__ import annotations

import json
from pathlib import Path

from reports.identity import signature
from reports.schema import (SCHEMA_VERSION, Counts, Diffs, Divergence, DivergenceRecord, Mark,
                            MismatchMap, Slot, Source, TPSlice, severity_rank, worst)


def run_line(meta: dict) -> dict:
    return {"schema": SCHEMA_VERSION, "type": "run", "loader": "synthetic",
            "loader_version": "1.0", "device": "cpu", "profile": "pr", "seed": None,
            "torch": "2.13.0+cpu", "hypothesis": "6.0", "python": "3.11",
            "revision": "0" * 40, "time": "2026-01-01T00:00:00Z", **meta}


def block(rows: int, cols: int, r0: int, r1: int, value: float = 1.0) -> list[list[float]]:
    """A map whose cell rows [r0, r1) are `value` and the rest 0."""
    return [[value if r0 <= r < r1 else 0.0 for _ in range(cols)] for r in range(rows)]


def unwritten_half(name: str) -> Divergence:
    """The P2 mutant's finding: the second half of a fused gate_up never written."""
    fused = name.rsplit(".", 2)[0] + ".gate_up_proj"
    return Divergence(
        "tensor", name, severity="divergence", finding="unwritten",
        headline=f"{name}: slot 1 (up_proj) of {fused} never written: 64 of 64 elements "
                 f"still hold the poison pattern",
        tensor=name, dtype="float32", shape=[8, 8], slot=Slot(1, "up_proj", fused, [8, 16]),
        source=Source(fused + ".weight", [8, 16]), counts=Counts(64, 64, 64, 64),
        diffs=Diffs(max_abs=float("nan"), ulp_histogram=[["nan/inf", 64]]), rows=[0, 8],
        first_index=[0, 0], expected="0.53", found="nan",
        map=MismatchMap([8, 8], block(8, 8, 0, 8), block(8, 8, 0, 8)))


def item(kind: int, name: str) -> Divergence:
    """One divergence of a synthetic record, of one of four shapes conformance.compare
    writes: a never-written tensor, a critical error, a name set, a rounding difference."""
    if kind == 0:
        return unwritten_half(name)
    if kind == 1:
        return Divergence("error", name, severity="critical", finding="accepted",
                          headline="loaded a checkpoint the reference refuses: "
                                   "UnsafeCheckpointError: pickle",
                          expected="UnsafeCheckpointError: pickle", found="loaded",
                          expected_family="unsafe_checkpoint", found_family="ok")
    if kind == 2:
        return Divergence("names", "missing", finding="names",
                          headline=f"missing: the candidate does not report {name}",
                          detail={"expected": [name, "model.norm.weight"],
                                  "found": ["model.norm.weight"]})
    return Divergence("tensor", name, finding="rounding", dtype="bfloat16", shape=[16, 8],
                      headline=f"{name}: 12 of 128 elements 1 ULP apart (rounding)",
                      counts=Counts(12, 128), rows=[0, 16],
                      diffs=Diffs(max_abs=0.0039, max_rel=0.0078, max_ulp=1,
                                  ulp_histogram=[["1", 12]]),
                      expected="0.5039", found="0.5078", first_index=[0, 3],
                      map=MismatchMap([16, 8], [[0.125 * ((r + c) % 2) for c in range(8)]
                                                for r in range(16)]))


def record(divergences: list[Divergence], *, i: int = 0, loader: str = "synthetic",
            **fields) -> dict:
    """A divergence record as harness.fail_on writes it (schema 2); its root cause, the
    first of its most severe divergences."""
    root_cause = min(range(len(divergences)), key=lambda k: severity_rank(divergences[k].severity))
    test = fields.pop("test", f"conformance/test_synthetic.py::test_property_{i % 40}")
    return DivergenceRecord(
        property=fields.pop("property", f"P{1 + i % 14} synthetic"), test=test, loader=loader,
        stage="final", severity=worst(d.severity for d in divergences),
        case=f"llama L=2 h=8 heads=2/1x4 I=16 V=8 float32 untied | fused; case {i}",
        rerun=f"pytest {test} --loader {loader} --hypothesis-profile=nightly "
              f"--hypothesis-seed={i}",
        signature=signature(test, [d.to_json() for d in divergences]),
        divergences=divergences, root_cause=root_cause,
        headline=divergences[root_cause].headline, spec={"family": "llama"},
        checkpoint="fused; disk=float32; 1 file", options="cpu poison",
        examples_before_failure=1 + i % 50, repro_checkpoint=f"results/repro/case_{i}",
        **fields).to_json()


def divergence(i: int, loader: str = "synthetic", subject: str | None = None,
                items: int | None = None) -> dict:
    """A synthetic divergence record: 1 to 6 divergences of varied kinds."""
    count = items if items is not None else 1 + i % 6
    projections = ("mlp.up_proj", "mlp.down_proj", "self_attn.o_proj")
    found = [item((i + k) % 4, subject or
                   f"model.layers.{(i + k) % 32}.{projections[i % 3]}.weight")
             for k in range(count)]
    return record(found, i=i, loader=loader)


def write(directory: Path, lines: list[dict], name: str = "records-main.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return directory


def qkv_record() -> dict:
    """A fused q/k/v parameter whose slot 1 (k_proj, rows 8:12) was never written in its
    second half and whose slot 2 (v_proj, rows 12:16) has its first row's values wrong;
    slot 0 (q_proj, rows 0:8) is right."""
    fused = "model.layers.0.self_attn.qkv_proj"
    k = Divergence(
        "tensor", "model.layers.0.self_attn.k_proj.weight", finding="unwritten",
        headline=f"model.layers.0.self_attn.k_proj.weight: slot 1 (k_proj) of {fused}: rows "
                 f"2:4 never written (16 of 32 elements hold the poison pattern)",
        tensor="model.layers.0.self_attn.k_proj.weight", dtype="float32", shape=[4, 8],
        slot=Slot(1, "k_proj", fused, [8, 12]), counts=Counts(16, 32, 16, 16), rows=[2, 4],
        diffs=Diffs(max_abs=float("nan"), ulp_histogram=[["nan/inf", 16]]),
        map=MismatchMap([4, 8], block(4, 8, 2, 4), block(4, 8, 2, 4)))
    v = Divergence(
        "tensor", "model.layers.0.self_attn.v_proj.weight", finding="values",
        headline="model.layers.0.self_attn.v_proj.weight: 8 of 32 elements differ in row 0",
        tensor="model.layers.0.self_attn.v_proj.weight", dtype="float32", shape=[4, 8],
        slot=Slot(2, "v_proj", fused, [12, 16]), counts=Counts(8, 32), rows=[0, 1],
        diffs=Diffs(max_abs=2.5, max_rel=4.0, max_ulp=40_000_000,
                    ulp_histogram=[["16-255", 1], ["256+", 7]]),
        expected="0.25", found="-2.25", first_index=[0, 0],
        map=MismatchMap([4, 8], block(4, 8, 0, 1)))
    return record([k, v], i=2, property="P2 coverage",
                   test="conformance/test_loading.py::test_load_matches_reference")


def tp_record() -> dict:
    """Every TP rank holds rank 0's q slice: rank 1's rows all differ."""
    name = "model.layers.0.self_attn.q_proj.weight"
    d = Divergence(
        "tensor", name, finding="same_slice",
        headline=f"{name}: every TP rank holds the same slice (rank 1/2 holds rank 0's rows)",
        tensor=name, dtype="float32", shape=[16, 8], tp=TPSlice(1, 2, 0, 8, 16),
        counts=Counts(64, 128), rows=[8, 16], diffs=Diffs(max_abs=1.9, max_ulp=9_000_000,
                                                          ulp_histogram=[["256+", 60],
                                                                         ["sign", 4]]),
        map=MismatchMap([16, 8], block(16, 8, 8, 16), row_marks=[Mark(8, "rank 1/2")]))
    return record([d], i=5, property="P7 tensor parallel",
                   test="conformance/test_tp.py::test_tp_ranks_match_reference")


def fp8_record() -> dict:
    name = "model.layers.0.mlp.down_proj.weight"
    d = Divergence(
        "fp8", name, finding="scale",
        headline=f"{name}: the FP8 scale differs (expected 0.00223, found 0.00446); "
                 f"dequantized max abs diff 0.9",
        tensor=name, dtype="float8_e4m3fn", shape=[8, 16], counts=Counts(128, 128),
        diffs=Diffs(dequantized_max_abs=0.9), expected="0.00223", found="0.00446",
        detail={"expected_scale": "0.00223", "found_scale": "0.00446"},
        map=MismatchMap([8, 16], block(8, 16, 0, 8)))
    return record([d], i=3, property="P4 fp8",
                   test="conformance/test_fp8.py::test_online_fp8_matches_reference")


def odd_records() -> list[dict]:
    """A byte count, a crash whose output is one unbroken 600-character line, and a
    tensor with a very long name: the cases that used to break the layout."""
    long_name = "model.layers.0." + "very_long_module_name." * 6 + "weight"
    crash = Divergence("crash", "load", severity="crash", finding="crash",
                       headline="the candidate's process died: SIGABRT",
                       message="the candidate's process died: SIGABRT\n" + "/tmp/" + "x" * 600)
    size = Divergence("bytes", "parameter_bytes", finding="bytes",
                      headline="parameter_bytes: expected 1,536 B, found 3,072 B",
                      expected="1536", found="3072")
    return [record([crash], i=7, property="P13 survival",
                    test="conformance/test_survival.py::test_candidate_survives"),
            record([size], i=8, property="P10 bytes",
                    test="conformance/test_bytes.py::test_parameter_bytes"),
            record([unwritten_half(long_name)], i=9)]
