"""`pytest conformance --loader NAME`: the candidate is validated once, up front, with one
clear line on failure; the header shows the capability table; unclaimed capabilities skip
with their reason."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

from tests.suite_process import PytestRun, run_pytest

ROOT = Path(__file__).resolve().parent.parent


def _pytest(*args: str, pythonpath: Path | None = None) -> PytestRun:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        str(p) for p in (ROOT, pythonpath) if p is not None)}
    env.pop("PYTEST_XDIST_WORKER", None)
    return run_pytest([*args, "-p", "no:cacheprovider"], cwd=ROOT, env=env, timeout=300)


def _error_lines(proc: PytestRun) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("ERROR")]


def test_unknown_loader_is_one_clear_error():
    proc = _pytest("conformance", "--loader", "does.not.exist")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    errors = _error_lines(proc)
    assert len(errors) == 1 and "no importable module 'does.not.exist'" in errors[0], errors
    assert "passed" not in proc.stdout and "failed" not in proc.stdout


def test_module_without_a_loader_is_refused():
    proc = _pytest("conformance", "--loader", "tests.mutants")
    errors = _error_lines(proc)
    assert proc.returncode == 4 and len(errors) == 1, proc.stdout + proc.stderr
    assert "has no loader or make_loader" in errors[0]


def test_object_breaking_the_contract_lists_every_problem(tmp_path):
    (tmp_path / "broken_loader.py").write_text(textwrap.dedent("""
        class Broken:
            name = "broken"
            version = "0"
            capabilities = frozenset({"load", "teleport", "forward"})
            variants = {"tied_checkpoint_head": "sometimes"}
            def load(self, checkpoint, spec, options):
                raise NotImplementedError
        loader = Broken()
    """))
    proc = _pytest("conformance", "--loader", "broken_loader", pythonpath=tmp_path)
    errors = _error_lines(proc)
    assert proc.returncode == 4 and len(errors) == 1, proc.stdout + proc.stderr
    for problem in ("unknown capabilities ['teleport']", "tied_checkpoint_head='sometimes'",
                    "claims 'forward' but has no callable forward"):
        assert problem in errors[0], errors[0]


def test_header_shows_loader_capabilities_and_profile():
    proc = _pytest("conformance", "--collect-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loadcheck: loader 'reference'" in proc.stdout
    assert "hypothesis profile 'pr', seed derandomized" in proc.stdout
    assert "loadcheck capabilities: +load" in proc.stdout and "+reload" in proc.stdout
    assert ("-cuda" in proc.stdout) != torch.cuda.is_available()


def test_unclaimed_capabilities_skip_with_their_reason(tmp_path):
    (tmp_path / "plain_loader.py").write_text(textwrap.dedent("""
        from reference.loading import ReferenceLoader
        loader = ReferenceLoader()
        loader.name = "plain"
        loader.capabilities = frozenset({"load"})
    """))
    proc = _pytest("conformance/test_loading.py", "--loader", "plain_loader", "-rs",
                   pythonpath=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "does not claim tp" in proc.stdout
    assert "does not claim fused_on_disk" in proc.stdout
    assert "does not claim forward" in proc.stdout
    assert " 3 skipped" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-800:]


def test_a_misspelt_loader_gets_the_closest_name_and_every_known_one():
    from conformance.loaders import LoaderResolutionError, resolve
    with pytest.raises(LoaderResolutionError) as raised:
        resolve("refrence-split")
    message = str(raised.value)
    assert "did you mean 'reference-split'?" in message
    for name in ("reference", "reference-split", "transformers", "accelerate", "torchao", "vllm"):
        assert name in message.split("Known names:")[1]
