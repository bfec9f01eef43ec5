"""The report at nightly scale: known divergences apart from new ones, a divergence in
several cells as one group, night over night (new / still failing since / fixed), a cell that
tested nothing or did not finish never shown as a pass, and the Markdown step summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

from reports.__main__ import main as reports_main
from reports.html import build_report, report_context
from reports.records import read_runs
from tests.test_reports_html import _cards, _divergence, _run_line, _write


def _cell(directory: Path, *, torch: str = "2.13.0+cpu", device: str = "cpu", day: str = "01",
          records: list[dict] = (), outcomes: dict[str, str] | None = None,
          end: bool = True, loader: str = "synthetic") -> Path:
    run_id = f"2026010{day}-{device}{torch}"
    lines = [_run_line({"run_id": run_id, "torch": torch, "device": device, "loader": loader,
                        "time": f"2026-01-{day}T03:00:00Z"})]
    lines += [{**r, "run_id": run_id, "loader": loader} for r in records]
    for test, outcome in (outcomes if outcomes is not None else {"t::a": "passed"}).items():
        lines.append({"schema": 1, "type": "outcome", "test": test, "outcome": outcome})
    if end:
        lines.append({"schema": 1, "type": "end", "exitstatus": 0, "tests": 1})
    return _write(directory, lines, f"records-{run_id}-main.jsonl")


def test_one_group_per_divergence_across_eight_cells(tmp_path):
    cells = [(device, f"2.1{v}.0+{device}") for device in ("cpu", "cuda") for v in range(1, 5)]
    for device, torch in cells:
        _cell(tmp_path / f"{device}{torch}", device=device, torch=torch,
              records=[_divergence(3)], outcomes={"t::a": "failed"})
    context = report_context(read_runs([tmp_path]))
    (card,) = context["cards"]
    assert len(card["badges"]) == 8 and len(context["cells"]) == 8
    html = build_report([tmp_path], tmp_path / "m.html").read_text()
    assert len(_cards(html)) == 1 and html.count('class="badge') == 8


def test_two_nights_new_still_failing_and_fixed(tmp_path):
    old, new = _divergence(3), _divergence(5)
    gone = _divergence(7, subject="model.layers.0.self_attn.q_proj.weight")
    _cell(tmp_path / "night1", day="01", records=[old, gone], outcomes={"t::a": "failed"})
    first = build_report([tmp_path / "night1"], tmp_path / "out1" / "matrix.html")
    history = json.loads((tmp_path / "out1" / "matrix.history.json").read_text())
    assert {d["since"] for d in history["divergences"]} == {"2026-01-01"}

    _cell(tmp_path / "night2", day="02", records=[old, new], outcomes={"t::a": "failed"})
    build_report([tmp_path / "night2"], tmp_path / "out2" / "matrix.html",
                 previous=tmp_path / "out1")
    _cell(tmp_path / "night3", day="03", records=[old, new], outcomes={"t::a": "failed"})
    context = report_context(read_runs([tmp_path / "night3"]),
                             previous=__import__("reports.history", fromlist=["x"])
                             .previous_divergences(tmp_path / "out2"))
    by_test = {c["test"]: c for c in context["cards"]}
    assert by_test[old["test"]]["status"] == "still"
    assert by_test[old["test"]]["since"] == "2026-01-01"   # carried through night 2's history
    assert by_test[new["test"]]["status"] == "still" and by_test[new["test"]]["since"] == "2026-01-02"

    # night 2 against night 1: one new, one still failing, one fixed; new ones first
    context = report_context(read_runs([tmp_path / "night2"]),
                             previous=__import__("reports.history", fromlist=["x"])
                             .previous_divergences(tmp_path / "out1"))
    assert [c["status"] for c in context["cards"]] == ["new", "still"]
    assert [f["signature"].split(" | ")[0] for f in context["fixed"]] == [
        gone["test"].split("/")[-1]]
    html = (tmp_path / "out2" / "matrix.html").read_text()
    assert html.index('id="new"') < html.index('id="matrix"')
    assert "1 new" in html and "1 still failing" in html and "1 fixed" in html
    assert first.exists()


def test_known_divergences_are_cards_of_their_own_not_failures(tmp_path):
    known = {**_divergence(3), "type": "known", "entry": "T7"}
    verdict = {"schema": 1, "type": "baseline", "file": "b.toml", "strict": False,
               "known": {"T7": ["t::a"]}, "fixed": ["T9"], "unverified": [], "not_run": [],
               "new": [], "classes": {}, "summaries": {"T9": "an old bug"}}
    _cell(tmp_path / "r", records=[known, verdict])
    context = report_context(read_runs([tmp_path / "r"]))
    (card,) = context["cards"]
    assert card["status"] == "known" and card["known"] == "T7" and context["failing"] == 0
    (cell,) = context["matrix"][0]["cells"]
    assert cell["label"] == "known" and cell["known"] == 1 and cell["fixed"] == 1
    out = reports_main(["summary", str(tmp_path / "r")])
    assert out == 0


def test_untested_and_incomplete_cells_are_never_a_pass(tmp_path):
    _cell(tmp_path / "skipped", device="cuda", outcomes={"t::a": "skipped", "t::b": "skipped"})
    _cell(tmp_path / "killed", torch="2.12.0+cpu", outcomes={"t::a": "passed"}, end=False)
    context = report_context(read_runs([tmp_path]))
    labels = {c["cell"]: (c["label"], c["state"]) for c in context["matrix"][0]["cells"]}
    assert labels["cuda · torch 2.13.0+cpu"] == ("not tested", "untested")
    assert labels["cpu · torch 2.12.0+cpu"] == ("incomplete", "untested")
    html = build_report([tmp_path], tmp_path / "m.html").read_text()
    assert "no new divergences" not in html and "incomplete" in html
    matrix = re.search(r'<section id="matrix">.*?</section>', html, re.S).group(0)
    assert "<b>pass</b>" not in matrix and "2 skipped" in matrix


def test_markdown_summary_tables_and_fenced_rerun_lines(tmp_path, capsys):
    _cell(tmp_path / "r", records=[_divergence(1), {**_divergence(2), "type": "known",
                                                    "entry": "K1"}],
          outcomes={"t::a": "failed"})
    assert reports_main(["summary", "--markdown", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "| property | new | known |" in text and "```sh\npytest " in text
    assert text.index("critical") < text.index("```sh")  # most severe first
