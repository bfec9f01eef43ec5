"""The HTML report (reports/html.py): a mutant's card names the tensor and carries the re-run
command; runs merge into one matrix; record text is escaped; nothing is fetched from the
network; 1,000 divergences build into a small file; and, where Chromium is installed, the page
renders in a real browser without console errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reports.__main__ import main as reports_main
from reports.html import build_report, report_context
from reports.records import read_records, read_runs, final_divergences
from tests.mutation import run_suite

MUTANT = "tests.mutants.p2_gate_up_second_half_unwritten"
SELECTION = "conformance/test_loading.py::test_load_matches_reference"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def mutant_results(tmp_path_factory) -> Path:
    """Real records: the P2 mutant caught by the coverage property (pr profile)."""
    directory = tmp_path_factory.mktemp("mutant-results")
    run = run_suite(MUTANT, SELECTION, records=directory)
    assert run.records_of("test_load_matches_reference"), run.output[-3000:]
    return directory


def _cards(html: str) -> list[str]:
    return re.findall(r"<article class=\"card.*?</article>", html, flags=re.S)


def _run_line(meta: dict) -> dict:
    return {"schema": 1, "type": "run", "loader": "synthetic", "loader_version": "1.0",
            "device": "cpu", "profile": "pr", "seed": None, "torch": "2.13.0+cpu",
            "hypothesis": "6.0", "python": "3.11", "revision": "0" * 40,
            "time": "2026-01-01T00:00:00Z", **meta}


def _item(kind: int, name: str) -> dict:
    """One divergence of a synthetic record, shaped like conformance.compare's."""
    if kind == 0:
        return {"kind": "tensor", "subject": name, "severity": "divergence",
                "message": f"{name}: 16 of 64 elements differ (rows 2:4 of 8), 16 still hold the "
                           f"poison pattern (never written); max abs diff nan\n    first at "
                           f"[2, 0]: expected 0.53, found nan (torch.float32); rows 8:16 of "
                           f"checkpoint key '{name.replace('up_proj', 'gate_up_proj')}'",
                "detail": {"mismatched": 16, "numel": 64, "first_index": [2, 0], "rows": [2, 4],
                           "poisoned": 16, "expected_value": "0.53", "found_value": "nan",
                           "max_abs_diff": float("nan"), "max_rel_diff": float("nan")}}
    if kind == 1:
        return {"kind": "error", "subject": name, "severity": "critical",
                "message": "[critical] candidate loaded a checkpoint the reference refuses: "
                           "UnsafeCheckpointError: pickle",
                "detail": {"expected": "UnsafeCheckpointError: pickle", "found": "loaded",
                           "expected_family": "unsafe_checkpoint", "found_family": "ok"}}
    if kind == 2:
        return {"kind": "names", "subject": "missing", "severity": "divergence",
                "message": f"missing names: candidate does not report ['{name}']",
                "detail": {"expected": [name, "model.norm.weight"], "found": ["model.norm.weight"]}}
    return {"kind": "shape", "subject": name, "severity": "divergence",
            "message": f"{name}: shape [4, 8], expected [8, 8]",
            "detail": {"expected": [8, 8], "found": [4, 8]}}


def _divergence(i: int, loader: str = "synthetic", subject: str | None = None,
                items: int | None = None) -> dict:
    """A synthetic divergence record shaped like harness.fail_on's: 1 to 6 divergences of
    varied kinds (tensor values, error families, name sets, shapes)."""
    count = items if items is not None else 1 + i % 6
    found = [_item((i + k) % 4, subject or f"model.layers.{(i + k) % 32}.mlp.up_proj.weight")
             for k in range(count)]
    return {"schema": 1, "type": "divergence", "property": f"P{1 + i % 14} synthetic",
            "test": f"conformance/test_synthetic.py::test_property_{i % 40}", "loader": loader,
            "severity": min((d["severity"] for d in found),
                            key=("critical", "crash", "hang", "divergence").index),
            "case": f"llama L=2 h=8 heads=2/1x4 I=16 V=8 float32 untied | fused; case {i}",
            "spec": {"family": "llama"}, "checkpoint": "fused; disk=float32; 1 file",
            "options": "cpu poison", "plan": "CheckpointPlan(...)",
            "rerun": f"pytest conformance/test_synthetic.py::test_property_{i % 40} --loader "
                     f"{loader} --hypothesis-profile=nightly --hypothesis-seed={i}",
            "examples_before_failure": 1 + i % 50, "divergences": found,
            "repro_checkpoint": f"results/repro/case_{i}"}


def _write(directory: Path, lines: list[dict], name: str = "records-main.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return directory


def test_mutant_card_names_tensor_and_shows_rerun(mutant_results, tmp_path):
    output = tmp_path / "report.html"
    assert reports_main(["build", str(mutant_results), "-o", str(output)]) == 0
    html = output.read_text()
    cards = [c for c in _cards(html) if "test_load_matches_reference" in c]
    assert cards, "no card for the failing test"
    card = cards[0]
    assert '<span class="prop">P2 coverage</span>' in card and f"<code>{MUTANT}</code>" in card
    assert "model.layers.0.mlp.up_proj.weight" in card
    assert "poisoned" in card and "<svg" in card
    rerun = re.search(r'<code id="(rr-d\d+)">([^<]*)</code><button type="button" class="copy" '
                      r'data-target="\1">', card)
    assert rerun, card
    assert f"-m pytest {SELECTION} --loader {MUTANT} --hypothesis-profile=pr" in rerun.group(2)
    record = next(r for r in read_records([mutant_results]).divergences
                  if r["test"].endswith("test_load_matches_reference"))
    assert record["repro_checkpoint"] in card and Path(record["repro_checkpoint"]).is_dir()
    # the run's metadata is in the header
    run = read_records([mutant_results]).runs[0]
    assert run["torch"] in html and run["revision"][:10] in html


def test_two_runs_merge_into_one_matrix(mutant_results, tmp_path):
    second = tmp_path / "cuda-run"
    for path in mutant_results.glob("records-*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for line in lines:
            if line["type"] == "run":
                line.update(device="cuda", torch="2.14.0+cu128")
        _write(second, lines, path.name)
    runs = read_runs([mutant_results, second])
    assert {run.cell for run in runs} == {("cpu", runs[0].cell[1]), ("cuda", "2.14.0+cu128")}
    context = report_context(runs)
    assert context["loaders"] == [MUTANT] and len(context["cells"]) == 2
    (row,) = context["matrix"]
    assert [c["state"] for c in row["cells"]] == ["bad", "bad"]
    assert all(c["runs"] == 1 and c["divergences"] >= 1 for c in row["cells"])
    output = build_report([mutant_results, second], tmp_path / "matrix.html")
    html = output.read_text()
    assert "cuda · torch 2.14.0+cu128" in html and f"cpu · torch {runs[0].cell[1]}" in html
    shrunk = final_divergences(read_records([mutant_results]).divergences)
    # one card per divergence, a badge per cell it occurs in (first-found records give way
    # to shrunk ones)
    cards = _cards(html)
    assert len(cards) == len(shrunk)
    assert all(re.search(r'class="badge[^>]*>cuda · torch 2\.14\.0\+cu128', c) for c in cards)


def test_identical_divergences_of_one_run_are_shown_once(tmp_path):
    record = _divergence(3)
    repeat = {**record, "examples_before_failure": 7}
    _write(tmp_path / "a", [_run_line({}), record, repeat, _divergence(4)])
    _write(tmp_path / "b", [_run_line({"torch": "2.12.0+cpu"}), record])
    context = report_context(read_runs([tmp_path / "a", tmp_path / "b"]))
    # two divergences; the first seen twice in run a and once in run b: one card, two cells
    assert len(context["cards"]) == 2
    assert sorted(c["repeats"] for c in context["cards"]) == [1, 3]
    assert sorted(len(c["badges"]) for c in context["cards"]) == [1, 2]


def test_outcome_lines_give_the_matrix_pass_counts(tmp_path):
    outcomes = [{"schema": 1, "type": "outcome", "test": f"t{i}", "outcome": outcome}
                for i, outcome in enumerate(["passed"] * 5 + ["failed", "skipped"])]
    _write(tmp_path, [_run_line({}), _divergence(0, items=1)] + outcomes)
    records = read_records([tmp_path])
    assert len(records.divergences) == 1 and len(records.outcomes) == 7
    (row,) = report_context(read_runs([tmp_path]))["matrix"]
    assert (row["cells"][0]["passed"], row["cells"][0]["failed"]) == (5, 1)
    html = build_report([tmp_path], tmp_path / "report.html").read_text()
    assert "5 passed · 1 failed · 1 skipped" in html


def test_record_text_is_escaped(tmp_path):
    evil = "model.<script>alert(1)</script>.weight"
    _write(tmp_path, [_run_line({"loader": 'x"><b>'}),
                      _divergence(0, loader='x"><b>', subject=evil)])
    html = build_report([tmp_path], tmp_path / "report.html").read_text()
    assert "<script>alert(1)" not in html and 'x"><b>' not in html
    assert "model.&lt;script&gt;alert(1)&lt;/script&gt;.weight" in html
    assert "<code>x&#34;&gt;&lt;b&gt;</code>" in html
    assert html.count("<script>") == 1  # the page's own


def test_no_network_references(mutant_results, tmp_path):
    _write(tmp_path / "synthetic", [_run_line({})] + [_divergence(i) for i in range(20)])
    html = build_report([mutant_results, tmp_path / "synthetic"], tmp_path / "r.html").read_text()
    network = r"""(?:src|href|action|xlink:href)\s*=\s*["']?\s*(?:[a-z]+:)?//"""
    assert not re.search(network, html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "url(" not in html and "@import" not in html and "<link" not in html


def test_a_thousand_divergences_build_small_and_fast(tmp_path):
    loaders = ["transformers", "vllm", "accelerate", "torchao"]
    records = []
    for n, loader in enumerate(loaders):
        lines = [_run_line({"loader": loader, "device": ("cpu", "cuda")[n % 2]})]
        lines += [_divergence(i, loader=loader) for i in range(n, 1000, len(loaders))]
        records += lines[1:]
        _write(tmp_path / f"cell-{n}", lines)
    start = time.perf_counter()
    output = build_report(sorted(tmp_path.glob("cell-*")), tmp_path / "report.html")
    elapsed = time.perf_counter() - start
    size = output.stat().st_size
    print(f"\n1,000 divergences: built in {elapsed:.2f} s, {size / 1e6:.2f} MB")
    html = output.read_text()
    # one card per distinct divergence (loader and signature), whatever the number of records
    from reports.identity import record_signature
    distinct = {(r["loader"], record_signature(r)) for r in records}
    assert len(_cards(html)) == len(distinct) >= 100
    assert size < 4_000_000


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(mutant_results, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install chromium")
    second = _write(tmp_path / "second", [_run_line({"loader": MUTANT, "device": "cuda"})]
                    + [_divergence(i, loader=MUTANT) for i in range(3)])
    report = build_report([mutant_results, second], tmp_path / "report.html")
    url = report.resolve().as_uri()
    shot = tmp_path / "report.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", url,
                     profile=tmp_path / "profile-shot")
    assert shot.exists(), proc.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # a blank 1280x2000 page compresses to a few KB
    if os.environ.get("LOADCHECK_SCREENSHOT"):  # to look: LOADCHECK_SCREENSHOT=/tmp/report.png
        shutil.copy(shot, os.environ["LOADCHECK_SCREENSHOT"])
    proc = _chromium("--enable-logging=stderr", "--v=0", "--dump-dom", url,
                     profile=tmp_path / "profile-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-ready="1"' in dom, "the page's script did not run to its end"
    assert dom.count('<article class="card') == len(_cards(report.read_text())) >= 4
    assert "model.layers.0.mlp.up_proj.weight" in dom
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not [line for line in console if "Uncaught" in line or "ERROR:CONSOLE" in line], console
    assert not [line for line in console if report.name in line], console  # the page logs nothing


# Run in the page after its own script: uses the filters, a summary link and a copy button
# the way a reader would, and leaves what it saw on <body data-probe>.
PROBE = """<script>
(function () {
  var out = {};
  function shown() { return document.querySelectorAll("#cards > .card:not([hidden])").length; }
  out.start = shown();
  document.querySelector('[data-none="f"]').click(); out.none = shown();
  document.querySelector('[data-all="f"]').click(); out.all = shown();
  var link = document.querySelector("#summary a.setf");
  out.link = Number(link.textContent.trim()); link.click(); out.linked = shown();
  out.counter = Number(document.getElementById("shown").textContent);
  var button = document.querySelector("button.copy"); button.click();
  out.rerun = document.getElementById(button.getAttribute("data-target")).textContent;
  setTimeout(function () {
    out.copy = button.textContent; out.selection = String(window.getSelection());
    document.body.setAttribute("data-probe", JSON.stringify(out));
  }, 200);
})();
</script>"""


def test_filters_and_copy_work_in_headless_chromium(mutant_results, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install chromium")
    synthetic = _write(tmp_path / "synthetic",
                       [_run_line({})] + [_divergence(i) for i in range(30)])
    html = build_report([mutant_results, synthetic], tmp_path / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    proc = _chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000",
                     "--dump-dom", probe.resolve().as_uri(), profile=tmp_path / "profile")
    assert "Uncaught" not in proc.stderr, proc.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    cards = len(_cards(html))
    assert seen["start"] == cards and seen["none"] == 0 and seen["all"] == cards
    assert seen["linked"] == seen["link"] == seen["counter"] >= 1
    # headless Chromium may refuse the clipboard: then the command is selected instead
    assert seen["copy"] == "copied" or seen["selection"] == seen["rerun"], seen
