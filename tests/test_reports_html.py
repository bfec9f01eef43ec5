"""The HTML report (reports/html.py): a mutant's card names the tensor and carries the re-run
command; runs merge into one matrix; record text is escaped; nothing is fetched from the
network; 1,000 divergences build into a small file; and, where Chromium is installed, the page
renders in a real browser without console errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from reports.__main__ import main as reports_main
from reports.html import build_report, report_context
from reports.records import read_records, read_runs, final_divergences
from reports.schema import SCHEMA_VERSION
from tests.report_records import (divergence as _divergence, fp8_record, odd_records,
                                  qkv_record, run_line as _run_line, tp_record, write as _write)
from tests.mutation import run_suite
from tests.report_browser import chromium, needs_chromium, probe

MUTANT = "tests.mutants.p2_gate_up_second_half_unwritten"
SELECTION = "conformance/test_loading.py::test_load_matches_reference"
@pytest.fixture(scope="module")
def mutant_results(tmp_path_factory) -> Path:
    """Real records: the P2 mutant caught by the coverage property (pr profile)."""
    directory = tmp_path_factory.mktemp("mutant-results")
    run = run_suite(MUTANT, SELECTION, records=directory)
    assert run.records_of("test_load_matches_reference"), run.output[-3000:]
    return directory


def _cards(html: str) -> list[str]:
    return re.findall(r"<article class=\"card.*?</article>", html, flags=re.S)


def test_mutant_card_names_tensor_and_shows_rerun(mutant_results, tmp_path):
    output = tmp_path / "report.html"
    assert reports_main(["build", str(mutant_results), "-o", str(output)]) == 0
    html = output.read_text()
    cards = [c for c in _cards(html) if "test_load_matches_reference" in c]
    assert cards, "no card for the failing test"
    card = cards[0]
    assert '<span class="prop">P2 coverage</span>' in card and f"<code>{MUTANT}</code>" in card
    assert "model.layers.0.mlp.up_proj.weight" in card
    assert "never written (poison)" in card and '<svg class="map"' in card
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
    # its picture, from the suite's own record: gate (slot 0) equal, up (slot 1) all poison
    (view,) = [c for c in report_context(read_runs([mutant_results]))["cards"]
               if c["test"].endswith("test_load_matches_reference")]
    gate, up = view["root"]["map"]["panels"]
    assert (gate["slot"], gate["equal"], up["slot"], up["equal"]) == (0, True, 1, False)
    _, _, cols, rows = (int(x) for x in up["grid"].split())
    assert up["poison"] == [(4, "".join(f"M0 {r}h{cols}v1h-{cols}z" for r in range(rows)))]


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
    outcomes = [{"schema": SCHEMA_VERSION, "type": "outcome", "test": f"t{i}", "outcome": outcome}
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


@needs_chromium
def test_report_renders_in_headless_chromium(mutant_results, tmp_path):
    second = _write(tmp_path / "second", [_run_line({"loader": MUTANT, "device": "cuda"})]
                    + [_divergence(i, loader=MUTANT) for i in range(3)])
    report = build_report([mutant_results, second], tmp_path / "report.html")
    url = report.resolve().as_uri()
    shot = tmp_path / "report.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1280,2000", url,
                    profile=tmp_path / "profile-shot")
    assert shot.exists(), proc.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # a blank 1280x2000 page compresses to a few KB
    if os.environ.get("LOADCHECK_SCREENSHOT"):  # to look: LOADCHECK_SCREENSHOT=/tmp/report.png
        shutil.copy(shot, os.environ["LOADCHECK_SCREENSHOT"])
    proc = chromium("--enable-logging=stderr", "--v=0", "--dump-dom", url,
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
  out.link = parseInt(link.textContent, 10); link.click(); out.linked = shown();
  out.counter = Number(document.getElementById("shown").textContent);
  var button = document.querySelector("button.copy"); button.click();
  out.rerun = document.getElementById(button.getAttribute("data-target")).textContent;
  setTimeout(function () {
    out.copy = button.textContent; out.selection = String(window.getSelection());
    report(out);
  }, 200);
})();
</script>"""


@needs_chromium
def test_filters_and_copy_work_in_headless_chromium(mutant_results, tmp_path):
    synthetic = _write(tmp_path / "synthetic",
                       [_run_line({})] + [_divergence(i) for i in range(30)])
    html = build_report([mutant_results, synthetic], tmp_path / "report.html").read_text()
    seen = probe(tmp_path / "report.html", PROBE, tmp_path)
    cards = len(_cards(html))
    assert seen["start"] == cards and seen["none"] == 0 and seen["all"] == cards
    assert seen["linked"] == seen["link"] == seen["counter"] >= 1
    # headless Chromium may refuse the clipboard: then the command is selected instead
    assert seen["copy"] == "copied" or seen["selection"] == seen["rerun"], seen



@pytest.fixture(scope="module")
def nightly_page(tmp_path_factory) -> Path:
    """A nightly matrix: 2 loaders (one with a 46-character name) x 16 cells (cpu and cuda x
    4 torch versions x 2), each with a fused q/k/v card, a TP card, an FP8 card, a crash
    whose output is one 600-character line, a byte count, a very long tensor name, and
    synthetic records, some critical."""
    root = tmp_path_factory.mktemp("nightly")
    dirs = []
    for loader in ("transformers", "tests.mutants.p2_gate_up_second_half_unwritten"):
        for n in range(16):
            device = ("cpu", "cuda")[n // 8]
            records = [qkv_record(), tp_record(), fp8_record(), *odd_records()][n % 3:]
            records += [_divergence(i) for i in range(n % 4, 12, 3)]
            dirs.append(_write(root / f"{loader}-{n}", [_run_line({
                "loader": loader, "device": device,
                "torch": f"2.1{1 + n % 4}.0+{device}{n // 4 % 2}"})]
                + [{**r, "loader": loader} for r in records]))
    return build_report(dirs, root / "report.html")


def test_severity_shows_in_matrix_cells_groups_and_filter(nightly_page):
    html = nightly_page.read_text()
    matrix = html[html.index('<section id="matrix">'):html.index('<section id="summary">')]
    assert matrix.count('<span class="sv sv-crash">1 crash</span>') == 32  # every cell
    assert matrix.count(' sev-critical"') == 32  # the cell marked with its worst
    summary = html[html.index('<section id="summary">'):html.index('<section id="divergences">')]
    assert '<span class="sv sv-crash">crash</span>' in summary
    assert re.search(r'<span class="sv sv-critical">critical</span>', summary)
    chips = re.findall(r'data-group="v" data-name="(\w+)"', html)
    assert chips == ["critical", "crash", "divergence"]


def test_fp8_cards_lead_with_scale_and_dequantized_error_and_bytes_have_units(tmp_path):
    fp8_card, = report_context(read_runs([_write(tmp_path / "fp8", [_run_line({}),
                                                                     fp8_record()])]))["cards"]
    labels = [label for label, _, _ in fp8_card["root"]["stats"]]
    assert labels[:3] == ["dequantized max abs diff", "scale", "codes differing"]
    assert fp8_card["root"]["stats"][1][1] == "0.00223 → 0.00446"
    records = odd_records()
    context = report_context(read_runs([_write(tmp_path / "odd", [_run_line({}), *records])]))
    (size,) = [c for c in context["cards"] if c["root"]["kind"] == "bytes"]
    assert (size["root"]["expected"], size["root"]["found"]) == ("1.5 KiB (1,536 B)",
                                                                 "3 KiB (3,072 B)")


# Where things are: every rectangle as [left, top, right, bottom] in CSS pixels.
GEOMETRY = """<script>
window.addEventListener("load", function () { setTimeout(function () {
  function r(el) { var b = el.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; }
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  function lines(el) {  // line boxes of an element's text
    var range = document.createRange(); range.selectNodeContents(el);
    var tops = {}; Array.prototype.forEach.call(range.getClientRects(), function (b) { tops[Math.round(b.top)] = 1; });
    return Object.keys(tops).length;
  }
  var out = {width: window.innerWidth, scroll_width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
    matrix: r(document.querySelector("table.matrix")),
    status: all("table.matrix td.m b").map(r), cells: all("table.matrix td.m").map(r),
    loaders: all("table.matrix th.ld").map(function (el) { return [el.scrollWidth, el.clientWidth]; }),
    fbar: r(document.getElementById("fbar")),
    names: all("code.subj").map(function (el) { return [el.textContent.length, lines(el), r(el)]; }),
    wide: all("pre.msg, .rerun code, .card, h3.hl").map(r), messages: all("pre.msg").length,
    cards: all("#cards > .card").map(function (el) { return [r(el), getComputedStyle(el).contentVisibility]; })};
  report(out);
}, 100); });
</script>"""


def _inside(rect: list[float], width: float) -> bool:
    return rect[0] >= -0.5 and rect[2] <= width + 0.5


@needs_chromium
def test_layout_at_420_px(nightly_page, tmp_path):
    seen = probe(nightly_page, GEOMETRY, tmp_path, width=420, height=900)
    width = seen["width"]
    assert width == 420, seen["width"]
    # nothing scrolls the page sideways: not a 600-character error line, not a long name
    assert seen["messages"] >= 1 and seen["scroll_width"] <= width, seen["scroll_width"]
    assert all(_inside(rect, width) for rect in seen["wide"])
    # every matrix status cell (2 loaders x 16 cells) is on screen, not cut off
    assert len(seen["status"]) == 32
    assert all(_inside(rect, width) and rect[2] - rect[0] > 0 for rect in seen["status"])
    assert all(_inside(rect, width) and rect[2] - rect[0] >= 100 for rect in seen["cells"])
    # the filter bar is one line (its summary) until opened
    assert seen["fbar"][3] - seen["fbar"][1] <= 48, seen["fbar"]
    # tensor names wrap at most a few times, never 4 characters a line
    for length, lines, rect in seen["names"]:
        assert length / lines >= min(length, 20), (length, lines, rect)


@needs_chromium
def test_layout_at_1920_px_with_16_cells(nightly_page, tmp_path):
    seen = probe(nightly_page, GEOMETRY, tmp_path, width=1920, height=1000)
    width = seen["width"]
    assert width == 1920 and seen["scroll_width"] <= width
    assert _inside(seen["matrix"], width), seen["matrix"]
    assert len(seen["cells"]) == 32 and all(_inside(rect, width) for rect in seen["cells"])
    # a loader's name stays inside its cell
    assert all(scroll <= client for scroll, client in seen["loaders"]), seen["loaders"]
    # the 16 columns share the width: no column is squeezed below a readable width
    assert min(rect[2] - rect[0] for rect in seen["cells"]) >= 90


# The filter as the page holds it: which cards show, which boxes are ticked, the URL.
FILTER_STATE = """<script>
window.addEventListener("load", function () { setTimeout(function () {
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  var out = {search: location.search,
    shown: all("#cards > .card:not([hidden])").map(function (c) { return c.id; }),
    counter: Number(document.getElementById("shown").textContent),
    ticked: all("#filters input:checked").map(function (b) { return b.getAttribute("data-group") + ":" + b.getAttribute("data-name"); })};
  // a reader ticks "divergence" as well: the URL follows
  document.querySelector('#filters input[data-group="v"][data-name="divergence"]').click();
  out.after = location.search;
  out.shown_after = all("#cards > .card:not([hidden])").length;
  report(out);
}, 100); });
</script>"""


@needs_chromium
def test_filter_state_lives_in_the_url(nightly_page, tmp_path):
    context = report_context(read_runs([p.parent for p in nightly_page.parent.glob(
        "*/records-*.jsonl")]))
    cell = "cuda · torch 2.14.0+cuda1"
    wanted = sorted(c["id"] for c in context["cards"] if c["loader"] == "transformers"
                    and c["severity"] == "crash" and any(b["cell"] == cell
                                                         for b in c["badges"]))
    assert wanted  # the fixture has such a card
    query = "?loader=transformers&cell=cuda/2.14.0%2Bcuda1&severity=crash"
    seen = probe(nightly_page, FILTER_STATE, tmp_path, query=query)
    assert sorted(seen["shown"]) == wanted and seen["counter"] == len(wanted)
    ticked = {t for t in seen["ticked"] if t[0] in "lcv"}
    assert ticked == {"l:transformers", "c:cuda/2.14.0+cuda1", "v:crash"}, ticked
    assert seen["search"] == query  # restored as given, not rewritten on load
    # ticking another box rewrites the query: a pasteable link to what is shown
    after = dict(p.split("=", 1) for p in seen["after"][1:].split("&"))
    assert after["loader"] == "transformers" and seen["after"].count("severity=") == 2
    assert seen["shown_after"] > len(wanted)


LANDING = """<script>
window.addEventListener("load", function () { setTimeout(function () {
  var card = document.getElementById(location.hash.slice(1));
  var bar = document.getElementById("fbar").getBoundingClientRect();
  report({top: card.getBoundingClientRect().top, bar: bar.bottom, scrolled: window.scrollY,
          open: card.querySelector("details").open, hidden: card.hidden, search: location.search,
          counter: Number(document.getElementById("shown").textContent),
          cards: document.querySelectorAll("#cards > .card").length});
}, 300); });
</script>"""


@needs_chromium
def test_an_anchor_lands_on_its_card_opened_below_the_filter_bar(nightly_page, tmp_path):
    html = nightly_page.read_text()
    cards = re.findall(r'<article class="card[^"]*" id="(d\d+)".*?\n<details( open)?>', html)
    closed = [card for card, is_open in cards if not is_open]
    assert closed, "the fixture has more cards than start open"
    seen = probe(nightly_page, LANDING, tmp_path, fragment="#" + closed[0], height=700)
    assert seen["open"] and seen["scrolled"] > 0
    # below the sticky filter bar, not under it, and not far below it
    assert seen["bar"] <= seen["top"] <= seen["bar"] + 16, seen
    # a link to a card the filter in the same URL hides: the filter gives way, and says so
    assert f'class="card sev-divergence" id="{closed[0]}"' in html
    seen = probe(nightly_page, LANDING, tmp_path, query="?severity=crash",
                 fragment="#" + closed[0], height=700)
    assert not seen["hidden"] and seen["open"] and seen["search"] == ""
    assert seen["counter"] == seen["cards"]


def test_a_fused_parameter_stacks_its_slots_in_order(tmp_path):
    """The picture's geometry, without a browser: q (rows 0:8, equal), k (8:12, second half
    never written), v (12:16, first row wrong), one panel each, in slot order."""
    _write(tmp_path, [_run_line({}), qkv_record()])
    (card,) = report_context(read_runs([tmp_path]))["cards"]
    picture = card["root"]["map"]
    panels = picture["panels"]
    assert [(p["slot"], p["equal"], p["rows"]) for p in panels] == [
        (0, True, "0:8"), (1, False, "8:12"), (2, False, "12:16")]
    assert all(a["y"] + a["h"] == pytest.approx(b["y"]) for a, b in zip(panels, panels[1:]))
    assert panels[0]["h"] > panels[1]["h"] == pytest.approx(panels[2]["h"])
    # k: poison in cell rows 2 and 3 of 4; v: differing values in cell row 0
    assert [level for level, _ in panels[1]["poison"]] == [4]
    assert panels[1]["poison"][0][1] == "M0 2h8v1h-8zM0 3h8v1h-8z"
    assert panels[2]["mismatch"] == [(4, "M0 0h8v1h-8z")] and panels[2]["poison"] == []
    assert [l["y1"] for l in picture["lines"] if l["cls"] == "slotb"] == [
        panels[1]["y"], panels[2]["y"]]
    assert {t["text"] for t in picture["labels"]} >= {"slot 0", "1 k_proj", "2 v_proj"}
    assert picture["poisoned"] and picture["fused"] == "model.layers.0.self_attn.qkv_proj"
    # a record that does not say where its slot's rows are: the equal slot before it keeps
    # its place in the order, drawn thin (its size is unknown)
    from reports.pictures import MIN_PANEL, map_picture
    from tests.report_records import unwritten_half
    up = unwritten_half("model.layers.0.mlp.up_proj.weight")
    up.slot.rows = None
    gate, drawn = map_picture([up])["panels"]
    assert (gate["slot"], gate["equal"], gate["h"]) == (0, True, MIN_PANEL)
    assert (drawn["slot"], drawn["equal"]) == (1, False) and drawn["h"] > 4 * MIN_PANEL


def test_a_finding_without_a_map_is_drawn_from_its_tensors_comparison(tmp_path):
    """'every TP rank holds the same slice' has no map itself; the gathered tensor's
    comparison has one, with the rank boundaries: the card's picture is that one."""
    from reports.schema import Divergence
    from tests.report_records import record
    compared = Divergence.from_json(tp_record()["divergences"][0])
    compared.finding = "values"
    finding = Divergence("tensor", compared.subject, finding="same_slice",
                         headline=compared.subject + ": every TP rank holds rank 0's slice",
                         expected="each rank its own slice", found="rank 1: rank 0's")
    _write(tmp_path, [_run_line({}), record([finding, compared])])
    (card,) = report_context(read_runs([tmp_path]))["cards"]
    assert card["finding"] == "same_slice" and card["root"]["map_from"] == compared.headline
    assert [t["text"] for t in card["root"]["map"]["labels"]] == ["rank 1/2"]


# The mismatch maps as drawn: each panel's box and the boxes of its shaded paths.
MAPS = """<script>
window.addEventListener("load", function () { setTimeout(function () {
  function r(el) { var b = el.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; }
  function all(root, sel) { return Array.prototype.slice.call(root.querySelectorAll(sel)); }
  var out = all(document, "#cards > .card").map(function (card) {
    var map = card.querySelector(".item.root svg.map");
    return {headline: card.querySelector("h3.hl").textContent, map: map && {
      panels: all(map, "g.panel").map(function (g) { return {slot: g.getAttribute("data-slot"),
        box: r(g.querySelector("rect.bg")), equal: g.classList.contains("eq"),
        poison: all(g, "path[class^=p]").map(r), mismatch: all(g, "path[class^=d]").map(r),
        colours: all(g, "path").map(function (p) { return getComputedStyle(p).fill; })}; }),
      slot_lines: all(map, "line.slotb").map(r), marks: all(map, "line.mark").map(r),
      labels: all(map, "text").map(function (t) { return t.textContent; })},
      bins: all(card, ".item.root svg.hist g").map(function (g) {
        return [g.getAttribute("data-bin"), Number(g.getAttribute("data-count")), g.getAttribute("class"),
                getComputedStyle(g.querySelector("rect")).fill]; })};
  });
  report(out);
}, 100); });
</script>"""


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1.0


@needs_chromium
def test_mismatch_maps_in_chromium(tmp_path):
    _write(tmp_path, [_run_line({}), qkv_record(), tp_record(), _divergence(3, items=1)])
    page = build_report([tmp_path], tmp_path / "report.html")
    cards = {c["headline"].split(":")[0]: c for c in probe(page, MAPS, tmp_path)}
    qkv = cards["model.layers.0.self_attn.k_proj.weight"]["map"]
    q, k, v = qkv["panels"]
    assert [p["slot"] for p in (q, k, v)] == ["0", "1", "2"] and q["equal"] and not q["poison"]
    assert q["box"][3] <= k["box"][1] + 0.5 and k["box"][3] <= v["box"][1] + 0.5
    # k: the lower half of its panel is poison, edge to edge
    (poison,) = k["poison"]
    middle = (k["box"][1] + k["box"][3]) / 2
    assert _close(poison[1], middle) and _close(poison[3], k["box"][3])
    assert _close(poison[0], k["box"][0]) and _close(poison[2], k["box"][2])
    # v: its first of four rows differs, in another colour than poison
    (wrong,) = v["mismatch"]
    assert _close(wrong[1], v["box"][1])
    assert _close(wrong[3], v["box"][1] + (v["box"][3] - v["box"][1]) / 4)
    assert len(set(v["colours"]) | set(k["colours"])) == 2
    # slot boundaries drawn where k and v begin, and the slots named
    assert [round(line[1]) for line in qkv["slot_lines"]] == [round(k["box"][1]),
                                                             round(v["box"][1])]
    assert {"slot 0", "1 k_proj", "2 v_proj"} <= set(qkv["labels"])
    # TP: rank 1's half differs, and the rank boundary is drawn and labelled at half height
    tp = cards["model.layers.0.self_attn.q_proj.weight"]
    (panel,) = tp["map"]["panels"]
    (mark,) = tp["map"]["marks"]
    half = (panel["box"][1] + panel["box"][3]) / 2
    assert _close(mark[1], half) and _close(panel["mismatch"][0][1], half)
    assert "rank 1/2" in tp["map"]["labels"]
    # the ULP histograms: rounding (1 ULP) is drawn unlike garbage and unlike NaN
    rounding = cards["model.layers.3.mlp.up_proj.weight"]["bins"]
    assert [b[:3] for b in rounding] == [["1", 12, "u-round"]]
    garbage = cards["model.layers.0.self_attn.q_proj.weight"]["bins"]
    assert [b[:2] for b in garbage] == [["256+", 60], ["sign", 4]]
    nan = cards["model.layers.0.self_attn.k_proj.weight"]["bins"]
    assert [b[:3] for b in nan] == [["nan/inf", 16, "u-nan"]]
    assert len({rounding[0][3], garbage[0][3], nan[0][3]}) == 3


@needs_chromium
def test_a_full_page_screenshot_shows_every_card(tmp_path):
    from PIL import Image
    _write(tmp_path, [_run_line({}), qkv_record(), tp_record(), fp8_record(), *odd_records()]
           + [_divergence(i) for i in range(14)])
    page = build_report([tmp_path], tmp_path / "report.html")
    seen = probe(page, GEOMETRY, tmp_path, width=1280)
    assert len(seen["cards"]) >= 14
    # nothing lets the browser skip painting a card it deems off screen (content-visibility:
    # auto left every card after the second blank in a full-page capture; the tall window
    # below is all viewport, so this style check is what guards against it coming back)
    assert {visibility for _, visibility in seen["cards"]} == {"visible"}
    height = seen["height"]
    assert height < 16_000  # one capture
    shot = tmp_path / "full.png"
    proc = chromium(f"--screenshot={shot}", f"--window-size=1280,{height}", "--hide-scrollbars",
                    page.resolve().as_uri(), profile=tmp_path / "profile-shot")
    assert shot.exists(), proc.stderr[-2000:]
    image = Image.open(shot).convert("L")
    assert image.size == (1280, height), image.size
    for rect, _ in seen["cards"]:
        # the card's text is painted: dark pixels inside its box, below its border
        inside = image.crop((int(rect[0]) + 8, int(rect[1]) + 4, int(rect[2]) - 4,
                             int(rect[3]) - 4))
        ink = sum(inside.point(lambda v: 255 if v < 110 else 0).histogram()[255:])
        assert ink > 200, (rect, ink)


def test_the_runs_table_says_what_a_partial_loader_was_not_tested_on(tmp_path):
    """Features left out of drawn specs (outside the loader's model support), added up over
    the run's processes, are listed with their counts beside the run's state."""
    directory = _write(tmp_path / "partial", [
        _run_line({"run_id": "p1"}),
        {"schema": SCHEMA_VERSION, "type": "support", "run_id": "p1",
         "not_generated": {"tied heads": 2, "attention biases": 5}},
        {"schema": SCHEMA_VERSION, "type": "support", "run_id": "p1",
         "not_generated": {"tied heads": 1}}])
    html = build_report([directory], tmp_path / "report.html").read_text()
    assert "not generated: attention biases &times;5, tied heads &times;3" in html
