"""The failure output is the suite's user interface: a failing property leads with the
tensor at fault and the structural finding, prints one screen, names distinct bugs
distinctly, and the README's "Reading a failure" example is what the suite prints."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from conformance.failures import failure_type, ordered_by_cause, repro_slug
from reports.schema import Counts, Divergence
from tests.mutation import ROOT, run_suite

# (mutant, its catching test, what the first line of its failure must say)
FIRST_LINES = [
    ("p2_gate_up_second_half_unwritten", "conformance/test_loading.py::test_load_matches_reference",
     r"loadcheck\.unwritten: P2 coverage: model\.layers\.\d+\.mlp\.up_proj\.weight: never written"),
    ("p1_tp_rank_ignored", "conformance/test_loading.py::test_gathered_ranks_equal_tp1",
     r"loadcheck\.same_slice: P1 tensor parallel: model\.\S+: every TP rank holds the same slice"),
    ("seed003_fused_scale_slot0_only", "conformance/test_fp8.py",
     r"loadcheck\.unwritten: P\d+ [^:]+: model\.layers\.\d+\.self_attn\.[qkv]_proj \(slot \d "
     r"\(\w+\) of \S+\): scale never written"),
    ("p11_unpickles_bin_files", "conformance/test_hostile.py",
     r"loadcheck\.unpickled: P11 [^:]+: \[critical\] the candidate unpickled a checkpoint file"),
    ("p2_float_into_int_cast", "conformance/test_loading.py::test_dtype_rules",
     r"loadcheck\.\w+: dtype rules: model\.extras\.\S+: "),
]

MAX_LINES_PER_FAILURE = 40


def _failures(output: str) -> list[str]:
    """Each failure's block of pytest's -q output, from its ____ header to the next."""
    blocks = re.split(r"^_{3,} .* _{3,}$", output, flags=re.M)[1:]
    return [re.split(r"^={3,} ", b, flags=re.M)[0] for b in blocks]


@pytest.mark.parametrize("mutant, selection, first_line", FIRST_LINES,
                         ids=[m for m, _, _ in FIRST_LINES])
def test_a_failure_leads_with_the_tensor_and_finding_in_one_screen(mutant, selection,
                                                                   first_line, tmp_path):
    run = run_suite(f"tests.mutants.{mutant}", selection, records=tmp_path)
    assert run.returncode == 1, run.output[-3000:]
    blocks = _failures(run.output)
    assert blocks, run.output[-3000:]
    for block in blocks:
        assert len(block.splitlines()) <= MAX_LINES_PER_FAILURE, block
    # the exception's first line is the first `E` line pytest prints for it
    firsts = [next(line for line in b.splitlines() if line.startswith("E ")) for b in blocks]
    assert any(re.search(first_line, line) for line in firsts), firsts
    # and the section after the run names it whole (pytest's own -rf line is cut to the width)
    section = run.output.split("root cause first", 1)[-1]
    assert re.search(first_line.split(": ", 1)[1].split(r"\.", 1)[0], section), section[:2000]


def test_the_readme_example_is_what_the_suite_prints(tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Reading a failure\n\n```\n(.*?)```", readme, re.S).group(1)
    mutant = re.search(r"--loader (tests\.mutants\.\w+)", example).group(1)
    run = run_suite(mutant, "conformance/test_loading.py::test_load_matches_reference",
                    records=tmp_path)
    # pytest prints the exception's lines after "E   " (the suite's runs use --tb=short)
    message = [line[4:] for line in run.output.splitlines() if line.startswith("E   ")]
    start = next(i for i, line in enumerate(message) if line.startswith("loadcheck."))
    end = next(i for i, line in enumerate(message) if line.lstrip().startswith("re-run:"))
    shown = "\n".join(message[start:end + 1]) + "\n"
    # the re-run line names this interpreter; the README shows the checkout's .venv
    shown = re.sub(r"re-run: PYTHONPATH=\S+ \S+ -m pytest", "re-run: .venv/bin/python -m pytest",
                   shown)
    assert shown == example, f"README:\n{example}\nprinted:\n{shown}\n{run.output[-1500:]}"


def test_two_unrelated_bugs_are_both_reported_from_one_run(tmp_path):
    """A k_proj bias never written and integer extras off by one: two failures, each
    shrunk and recorded, from one run of one property."""
    run = run_suite("tests.two_bug_mutant",
                    "conformance/test_loading.py::test_load_matches_reference", records=tmp_path)
    assert run.returncode == 1, run.output[-3000:]
    assert re.search(r"found 2 distinct failures", run.output), run.output[-3000:]
    final = [r for r in run.records_of("test_load_matches_reference") if r["stage"] == "final"]
    causes = {r["divergences"][0]["finding"]: r["divergences"][0]["subject"] for r in final}
    assert causes.get("unwritten", "").endswith("k_proj.bias"), causes
    assert ".extras." in causes.get("values", ""), causes


def test_the_root_cause_comes_first_and_names_the_exception():
    values = Divergence("tensor", "model.norm.weight", "m: differ", finding="values")
    unwritten = Divergence("tensor", "model.layers.0.mlp.up_proj.weight", "u: never",
                           finding="unwritten", counts=Counts(4, 4, 4))
    names = Divergence("names", "loaded", "loaded names", finding="names")
    crash = Divergence("crash", "load", "[crash] died", severity="crash")
    assert ordered_by_cause([names, values, unwritten]) == [unwritten, names, values]
    assert ordered_by_cause([values, unwritten, crash])[0] is crash
    assert failure_type("unwritten") is failure_type("unwritten")
    assert failure_type("unwritten") is not failure_type("values")
    assert issubclass(failure_type("values"), AssertionError)
    assert f"{failure_type('scale').__module__}.{failure_type('scale').__qualname__}" \
        == "loadcheck.scale"


def test_repro_directory_names_keep_their_start_and_stay_distinct():
    long = "conformance/test_hostile.py::test_named_hostile_checkpoint_is_refused[" + "x" * 90
    a, b = repro_slug(long + "a]"), repro_slug(long + "b]")
    assert a.startswith("test_hostile.py_test_named_hostile") and a != b and len(a) <= 80
    assert repro_slug("conformance/test_fp8.py::test_zero") == "test_fp8.py_test_zero"


@pytest.mark.parametrize("mutant, selection, options, said", [
    ("survival_aborts_on_bool_extra", "conformance/test_loading.py::test_dtype_rules",
     ("--isolate",), r"\[crash\].*SIGABRT"),
    ("survival_hangs_on_meta_submodule",
     "conformance/test_meta.py::test_meta_submodule_materialised_after_load",
     ("--candidate-timeout=2",), r"\[hang\]"),
], ids=["crash", "hang"])
def test_a_crash_or_hang_replays_contained(mutant, selection, options, said, tmp_path):
    """Its re-run line and replay command carry --isolate and the timeout in force, and the
    replay reports the crash or the hang (instead of dying with SIGABRT or waiting forever)."""
    run = run_suite(f"tests.mutants.{mutant}", selection, *options, records=tmp_path)
    assert run.returncode == 1, run.output[-3000:]
    record = next(r for r in run.records if r.get("type") == "divergence"
                  and re.search(said, " ".join(d["message"] for d in r["divergences"])))
    assert "--isolate" in record["rerun"] and "--candidate-timeout=" in record["rerun"], record["rerun"]
    command = [t for t in shlex.split(record["repro_command"]) if not t.startswith("PYTHONPATH=")]
    assert command[command.index("--candidate-timeout") + 1] == ("2" if "hang" in said else "60")
    replay = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert replay.returncode in (1, 3), replay.stdout + replay.stderr
    assert re.search(said.replace(r"\[", "").replace(r"\]", "").split(".*")[0].lower(),
                     replay.stdout.lower()), replay.stdout + replay.stderr
