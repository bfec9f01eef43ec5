"""The zygote that starts the tests' suite runs: each run sees its own working directory,
environment, import path and exit status, nothing of an earlier run, and a run past its
timeout is killed with its process group."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.suite_process import run_pytest

PROBE = '''
import os, sys
import marker_module

def test_sees_its_own_place():
    assert os.getcwd() == {cwd!r}
    assert os.environ["LOADCHECK_PROBE"] == "{value}"
    assert "LEAKED" not in os.environ, "an earlier run's environment leaked"
    assert marker_module.TOUCHED == 0, "an earlier run's module state leaked"
    marker_module.TOUCHED += 1
    os.environ["LEAKED"] = "1"
'''


def _env(tmp_path: Path, value: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    return {**env, "LOADCHECK_PROBE": value, "PYTHONPATH": str(tmp_path / "lib")}


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "marker_module.py").write_text("TOUCHED = 0\n")
    (tmp_path / "work").mkdir()
    return tmp_path


def test_each_run_is_a_fresh_pytest_in_its_own_place(probe: Path):
    work = probe / "work"
    (work / "test_probe.py").write_text(textwrap.dedent(PROBE.format(cwd=str(work), value="a")))
    args = ["test_probe.py", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    first = run_pytest(args, cwd=work, env=_env(probe, "a"), timeout=120)
    assert first.returncode == 0 and "1 passed" in first.stdout, first.stdout + first.stderr
    again = run_pytest(args, cwd=work, env=_env(probe, "a"), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    other = run_pytest(args, cwd=work, env=_env(probe, "b"), timeout=120)
    assert other.returncode == 1 and "LOADCHECK_PROBE" in other.stdout, other.stdout
    # xdist's workers import from the run's PYTHONPATH too (xdist hands them its controller's
    # sys.path as it was when xdist was imported)
    workers = run_pytest([*args, "-n", "1"], cwd=work, env=_env(probe, "a"), timeout=120)
    assert workers.returncode == 0 and "1 passed" in workers.stdout, workers.stdout[-3000:]
    assert "cannot be rewritten" not in workers.stdout, workers.stdout[-3000:]


def test_a_run_past_its_timeout_is_killed_with_its_group(probe: Path):
    work = probe / "work"
    (work / "test_sleeps.py").write_text(textwrap.dedent('''
        import subprocess, sys, time
        def test_sleeps():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # loadcheck-zygote-probe"])
            time.sleep(600)
    '''))
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_pytest(["test_sleeps.py", "-q", "-p", "no:cacheprovider"], cwd=work,
                   env=_env(probe, "a"), timeout=5)
    assert time.monotonic() - started < 60
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", "loadcheck-zygote-probe"], capture_output=True, text=True)
    assert left.stdout == "", f"the run's child outlived its timeout: pids {left.stdout.split()}"
