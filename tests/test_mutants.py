"""The suite catches every known bug: each mutant in tests/mutants/ fails its property in
the `pr` profile within 20 examples, with a message and a record naming the right tensor,
and the saved repro checkpoint reproduces the failure with the printed command."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys

import pytest

from tests.mutants import MUTANTS
from tests.mutation import ROOT, run_suite

MAX_EXAMPLES_TO_CATCH = 20


@pytest.mark.parametrize("name", MUTANTS)
def test_mutant_is_caught(name, tmp_path):
    catch = importlib.import_module(f"tests.mutants.{name}").CATCH
    run = run_suite(f"tests.mutants.{name}", f"conformance/{catch.test}", *catch.options,
                    records=tmp_path)
    assert run.returncode == 1, f"{name} ({catch.bug}) was not caught by {catch.test}:\n" \
                                f"{run.output[-3000:]}"
    records = run.records_of(catch.test)
    assert records, f"{name}: {catch.test} failed but wrote no record:\n{run.output[-3000:]}"
    def messages(record):
        return " ".join(d["message"] for d in record["divergences"])
    naming = [r for r in records if re.search(catch.names, messages(r))]
    assert naming, (f"{name}: no divergence names {catch.names!r}; they say: "
                    f"{' // '.join(messages(r) for r in records)[:2000]}")
    record = naming[0]
    assert re.search(catch.names, run.output), f"{name}: the output should name {catch.names!r}"
    budget = min(catch.budget, 2 * MAX_EXAMPLES_TO_CATCH)  # an exception is bounded too
    assert record["examples_before_failure"] <= budget, (
        f"{name}: took {record['examples_before_failure']} examples to catch "
        f"(budget {budget})")
    assert f"--loader tests.mutants.{name}" in record["rerun"]
    # runs as printed from the suite's working directory (ROOT): its PYTHONPATH, its python
    assert re.search(rf"re-run: PYTHONPATH={re.escape(str(ROOT))} \S*python\S* -m pytest "
                     r"'?conformance/test_", run.output), run.output[-2000:]


def test_repro_checkpoint_reproduces_the_failure(tmp_path):
    """The checkpoint saved beside a record fails the candidate on its own, through the
    record's replay command, and the reference agrees with itself on it."""
    run = run_suite("tests.mutants.p2_gate_up_second_half_unwritten",
                    "conformance/test_loading.py::test_load_matches_reference", records=tmp_path)
    record = next(r for r in run.records_of("test_load_matches_reference")
                  if r["stage"] == "final")
    command = [t for t in shlex.split(record["repro_command"]) if not t.startswith("PYTHONPATH=")]
    assert command[1:3] == ["-m", "conformance.repro"] and "python" in command[0], command
    replay = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert replay.returncode == 1 and "up_proj" in replay.stdout, replay.stdout + replay.stderr
    agree = subprocess.run([sys.executable, "-m", "conformance.repro",
                            record["repro_checkpoint"], "--loader", "reference"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert agree.returncode == 0 and agree.stdout.strip().endswith("agrees"), agree.stdout


def test_corrupted_bytes_property_catches_a_lax_header_parser(tmp_path):
    """The generated-corruption property (not only the named corpus) catches a parser that
    trusts its header: a cut or patched file makes it crash or load garbage."""
    run = run_suite("tests.mutants.p11_trusts_header_offsets",
                    "conformance/test_hostile.py::test_corrupted_bytes_are_refused_or_loaded_alike",
                    records=tmp_path)
    assert run.returncode == 1, run.output[-2000:]
    (record,) = [r for r in run.records_of("test_corrupted_bytes_are_refused_or_loaded_alike")
                 if r["stage"] == "final"]
    assert record["examples_before_failure"] <= MAX_EXAMPLES_TO_CATCH


def test_every_single_load_property_is_replayed_by_repro():
    """repro's list of properties it replays whole matches the ones that fail through
    check_case (a new one must be added there, or it would replay as 'not a verdict')."""
    from conformance.repro import REPLAYED
    checked = {m for path in (ROOT / "conformance").glob("test_*.py")
               for m in re.findall(r'check_case\([^"]*"([^"]+)"', path.read_text())}
    assert checked and checked <= REPLAYED, checked - REPLAYED


def test_repro_of_an_offload_failure_is_no_verdict(tmp_path):
    """A saved P9 offload failure holds the checkpoint, not the offload plan: its replay
    must not say 'agrees' with exit 0 (it did: the load alone agrees)."""
    run = run_suite("tests.mutants.p9_offload_does_nothing", "conformance/test_offload.py",
                    records=tmp_path)
    record = next(r for r in run.records_of("test_offloaded_equals_resident_and_lives_on_the_host")
                  if r["stage"] == "final")
    command = [t for t in shlex.split(record["repro_command"]) if not t.startswith("PYTHONPATH=")]
    replay = subprocess.run([sys.executable, *command[1:]],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert replay.returncode == 3, replay.stdout + replay.stderr
    assert "the load agrees; 'P9 offload' needs more" in replay.stdout
    assert "re-run line" in replay.stdout



def test_repro_of_a_shard_linked_outside_replays_as_the_same_critical_divergence(tmp_path):
    """The file a hostile shard links to outside the checkpoint is saved with the repro, so
    the replay meets the same critical divergence (the loader follows the link and loads
    what the reference refuses as unsafe; before, the copied link dangled and the replay
    met a crash instead), and the reference agrees with itself there."""
    run = run_suite("tests.mutants.p11_shard_names_unvalidated", "conformance/test_hostile.py::"
                    "test_named_hostile_checkpoint_is_refused[shard-symlink-outside]",
                    records=tmp_path)
    (record,) = [r for r in run.records_of("test_named_hostile_checkpoint_is_refused")
                 if r["stage"] == "final"]
    assert record["severity"] == "critical", record["divergences"]
    command = [t for t in shlex.split(record["repro_command"]) if not t.startswith("PYTHONPATH=")]
    replay = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert replay.returncode == 1 and "candidate: loaded" in replay.stdout \
        and "[critical] candidate loaded a checkpoint the reference refuses" in replay.stdout, \
        replay.stdout + replay.stderr
    agree = subprocess.run([sys.executable, "-m", "conformance.repro",
                            record["repro_checkpoint"], "--loader", "reference"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert agree.returncode == 0 and "UnsafeCheckpointError" in agree.stdout, agree.stdout
