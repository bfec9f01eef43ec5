"""Differential mode: a user's own checkpoint directory, loaded by the reference and by the
candidate, every canonical tensor compared bit for bit.

    python -m conformance.differential --loader NAME --checkpoint DIR [--tp N] [--records DIR]

A subcommand, not a pytest option: this is one long comparison of one checkpoint, not a
property over generated examples. It streams a progress line per layer (pytest would
capture it), and nothing of Hypothesis (profiles, shrinking, seeds) applies. Its
divergences are written as the suite's divergence records, so `python -m reports` renders
them beside any property run.

The spec comes from config.json (reference/hf_config.py; a config the reference cannot
express is refused with one line naming the field). The candidate loads the whole model
(its own memory). The reference loads lazily: every weight whose bytes need no conversion
is a private file mapping, so only the layer being compared is resident; after each layer
its pages are handed back (MADV_DONTNEED), so the comparison adds about one layer to the
candidate's own footprint. Exit status: 0 equal, 1 divergent, 2 refused or unusable input.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import re
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from reference.dtypes import FP8_DTYPES, PLAIN_FLOATS, cast_float
from reference.contract import CONFIG_FILE, INDEX_FILE, LoadError, LoadOptions, ModelSpec
from reference.hf_config import UnsupportedConfigError, spec_from_config
from reference.loading import ReferenceLoader
from .compare import (SEVERITIES, Divergence, Outcome, compare_outcomes, compare_states,
                      run_outcome)
from .quant_compare import refine_quantized
from .harness import name_sets
from .loaders import LoaderResolutionError, resolve
from .records import RecordWriter, new_run_id, replace_cell, run_metadata
from .survival import IsolatedLoader, call_with_timeout, checked_result

__all__ = ["Differential", "StreamedReference", "main", "layer_groups", "default_timeout"]

PROPERTY = "differential"
# The default candidate timeout: a real load reads at least ~1 GB a minute, even from a
# slow disk, plus start-up (imports, building the model).
_TIMEOUT_BASE_S, _TIMEOUT_PER_GB_S = 600.0, 60.0


def default_timeout(checkpoint: Path) -> float:
    size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors") if p.is_file())
    return _TIMEOUT_BASE_S + _TIMEOUT_PER_GB_S * size / 1e9
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def layer_groups(names: list[str]) -> list[tuple[str, list[str]]]:
    """Canonical names grouped for streaming: the embedding, each layer in order, the rest."""
    head, layers, tail = [], {}, []
    for name in names:
        match = _LAYER.match(name)
        if match:
            layers.setdefault(int(match.group(1)), []).append(name)
        elif name.startswith("model.embed_tokens."):
            head.append(name)
        else:
            tail.append(name)
    groups = [("embedding", head)] if head else []
    groups += [(f"layer {i}", layers[i]) for i in sorted(layers)]
    return groups + ([("norm and head", tail)] if tail else [])


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
_MADV_DONTNEED = 4


def _release(tensors: list[torch.Tensor]) -> None:
    """Hand back the resident pages of reference tensors that are done with: the whole pages
    inside each. A private file mapping re-reads them from the file if touched again; an
    anonymous one would read zeros, so this is only for tensors never read again."""
    if _libc is None:
        return
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous():
            continue
        start = -(-t.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (t.data_ptr() + _nbytes(t)) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > start:
            _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _rss(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _resident_bytes(ranges: dict[int, int]) -> int:
    """How many bytes of these address ranges (start -> length) are in this process's memory
    now: the present bit of each page in /proc/self/pagemap. A lazily mapped tensor that
    nothing has read yet is not. Where pagemap cannot be read, all of it counts (the
    candidate's model is then under-estimated, and our share over-estimated)."""
    page, total = mmap.PAGESIZE, 0
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            for start, nbytes in ranges.items():
                first, end = start // page, -(-(start + nbytes) // page)
                f.seek(first * 8)
                entries = torch.frombuffer(bytearray(f.read((end - first) * 8)),
                                           dtype=torch.int64)
                total += int((entries < 0).sum()) * page  # bit 63: present
    except (OSError, ValueError):
        return sum(ranges.values())
    return min(total, sum(ranges.values()))


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


_CHUNK_BYTES = 4 * 2**20


class StreamedReference(ReferenceLoader):
    """The reference of one streamed comparison. A slot whose bytes cannot be mapped (a
    dtype conversion, a tensor-parallel column slice) is read when its group is compared
    (`fill`), not at load: a float32 checkpoint of a bfloat16 model, or a rank's column
    slices, then costs one tensor's memory at a time, not all of them for the whole run.
    Only where nothing after the copies reads the values: not for an FP8 checkpoint
    (requantized after loading), online quantization, or check_finite."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pending: dict[str, list[tuple]] = {}
        self._defer = False
        self._opened: list = []

    def load(self, checkpoint: str, spec: ModelSpec, options: LoadOptions):
        self._defer = not (spec.quantized_on_disk or options.quantize or options.check_finite)
        return super().load(checkpoint, spec, options)

    def open(self, checkpoint: str):
        ckpt = super().open(checkpoint)
        self._opened.append(ckpt)  # closed by `close`, after the deferred reads
        return ckpt

    def copy_slot(self, ckpt, copy, dest, spec, options) -> None:
        if not self._defer:
            return super().copy_slot(ckpt, copy, dest, spec, options)
        self.pending.setdefault(copy.slot.canonical, []).append((ckpt, copy, dest, spec,
                                                                 options))

    def untie_if_different(self, ckpt, plan, model, spec, options) -> None:
        self.fill(["model.embed_tokens.weight"])  # compared with the checkpoint head here
        super().untie_if_different(ckpt, plan, model, spec, options)

    def fill(self, names) -> None:
        """Read the deferred slots of these canonical names."""
        for name in names:
            for ckpt, copy, dest, spec, options in self.pending.pop(name, ()):
                self._copy_in_chunks(ckpt, copy, dest, spec, options)

    def _copy_in_chunks(self, ckpt, copy, dest, spec, options) -> None:
        """copy_slot, a few MB of rows at a time where it reads into a temporary (a float
        conversion, a column slice): the temporary is then a chunk, not the whole tensor in
        its file dtype (twice its size for float32 on disk)."""
        entry = copy.entry
        piece, rows = self._rows(copy, spec, options)
        direct = (piece is None or piece.dim == 0) and entry.dtype == dest.dtype
        if rows is None or not dest.dim() or direct or entry.dtype not in PLAIN_FLOATS:
            return super().copy_slot(ckpt, copy, dest, spec, options)
        step = max(1, _CHUNK_BYTES // max(1, entry.row_bytes))
        for start in range(rows[0], rows[1], step):
            stop = min(start + step, rows[1])
            source = ckpt.read(entry, (start, stop))
            if piece is not None and piece.dim == 1:
                source = source[:, piece.start:piece.stop]
            dest[start - rows[0]:stop - rows[0]].copy_(cast_float(source, dest.dtype))

    def close(self) -> None:
        self.pending.clear()
        for ckpt in self._opened:
            ckpt.close()  # a deferred read reopened its shard
        self._opened.clear()


class Differential:
    """One comparison run: a checkpoint, a candidate, the reference under its variants."""

    def __init__(self, checkpoint: Path, loader_name: str, candidate, records: RecordWriter,
                 tp_size: int = 1, print_line: Callable[[str], None] = print,
                 poison: bool = True, timeout: float | None = None):
        """`candidate` is the loader, or an IsolatedLoader around it (which enforces the
        timeout itself, in the child); in process, a call runs under `timeout` seconds."""
        self.checkpoint, self.loader_name, self.candidate = checkpoint, loader_name, candidate
        self.timeout = timeout or default_timeout(checkpoint)
        self.stopped = ""  # "hang" or "crash" once the candidate did: no further rank
        self.records, self.tp_size, self.say = records, tp_size, print_line
        self.poison = poison and "poison" in candidate.capabilities
        self.reference = StreamedReference(variants=dict(candidate.variants))
        config = json.loads((checkpoint / CONFIG_FILE).read_text())
        derived = spec_from_config(config)  # may raise UnsupportedConfigError
        self.spec: ModelSpec = derived.spec
        self.forward_only = derived.forward_only
        self.bytes_compared = 0
        self.largest_group = 0  # bytes of the largest group compared (one layer, usually)
        self.candidate_rss = 0  # RSS right after the candidate's load (its own model)
        self.peak = 0  # peak RSS while comparing (after each candidate load)
        self.divergent = 0
        self.weight_map = {}
        if (checkpoint / INDEX_FILE).exists():
            self.weight_map = json.loads((checkpoint / INDEX_FILE).read_text()).get(
                "weight_map", {})

    # ----- one rank -------------------------------------------------------------------
    def options(self, rank: int) -> tuple[LoadOptions, LoadOptions]:
        """(reference, candidate) options: the candidate poisons its allocations when it
        can (a slot it never writes then shows as the pattern); the reference never needs
        to, and so maps instead of copying."""
        plain = LoadOptions(tp_size=self.tp_size, tp_rank=rank)
        return plain, replace(plain, poison=self.poison)

    def run_rank(self, rank: int) -> list[Divergence]:
        try:
            return self._run_rank(rank)
        finally:
            self.peak = max(self.peak, _rss("VmHWM"))
            self.reference.close()

    def _run_rank(self, rank: int) -> list[Divergence]:
        ref_options, cand_options = self.options(rank)
        tag = f"tp rank {rank}/{self.tp_size}: " if self.tp_size > 1 else ""
        started, before = time.perf_counter(), _rss()
        found = self.candidate_load(cand_options)
        if found.family in ("hang", "crash"):
            self.stopped = found.family
        # The candidate's own model: all it holds resident after its load (its tensors and
        # whatever else it keeps), plus the bytes of its tensors that are lazy file
        # mappings not read yet (transformers'), which the comparison will fault in.
        held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (found.result.state.values() if found.result else ())
                if t.device.type == "cpu" and t.untyped_storage().nbytes()}
        after = _rss()
        lazy = sum(held.values()) - _resident_bytes(held)
        self.candidate_rss = max(self.candidate_rss, after + lazy)
        _reset_peak()  # the candidate's own load peak is its business; from here, ours
        self.say(f"{tag}candidate loaded in {time.perf_counter() - started:.1f} s (RSS "
                 f"{before / 1e9:.2f} -> {after / 1e9:.2f} GB; its model "
                 f"{(after + lazy - before) / 1e9:.2f} GB: {sum(held.values()) / 1e9:.2f} GB "
                 f"of tensors, {lazy / 1e9:.2f} GB of them mapped and not read yet)")
        expected = run_outcome(lambda: self.reference.load(str(self.checkpoint), self.spec,
                                                           ref_options))
        if expected.error is not None or found.error is not None:
            divergences = compare_outcomes(expected, found, name_sets=(), device="cpu")
            self.say(f"{tag}reference: {expected.describe()}; candidate: {found.describe()}")
            self._record("load", divergences, ref_options)
            return divergences
        exp, got = expected.result, found.result
        # Name sets, tied head (aliases) and placement, without touching a tensor.
        divergences = compare_outcomes(
            Outcome(replace(exp, state={}, buffers={})),
            Outcome(replace(got, state={}, buffers={})),
            name_sets=name_sets(frozenset(self.candidate.capabilities)), device="cpu")
        self._record("names", divergences, ref_options)
        for label, names in layer_groups(list(exp.state) + sorted(set(got.state) -
                                                                  set(exp.state))):
            divergences += self.compare_group(label, names, exp, got, ref_options, tag)
        if self.forward_only:
            self.say(f"{tag}buffers not compared: config.json sets {', '.join(self.forward_only)}"
                     f", which the reference's rotary buffer does not model")
        elif got.buffers:
            buffers = compare_states(exp.buffers, got.buffers, where=lambda n: "a "
                                     "non-persistent buffer: it must equal what the "
                                     "constructor computes")
            self._record("buffers", buffers, ref_options)
            divergences += buffers
        return divergences

    def candidate_load(self, options: LoadOptions) -> Outcome:
        """The candidate's load under the suite's survival rules (conformance/survival.py):
        isolated, the child kills a call that outlives the timeout and reports a death; in
        process, the call runs in a thread abandoned after the timeout."""
        call = lambda: self.candidate.load(str(self.checkpoint), self.spec, options)  # noqa: E731
        if isinstance(self.candidate, IsolatedLoader):
            self.candidate.timeout = self.timeout
            return run_outcome(call)
        return run_outcome(lambda: checked_result(call_with_timeout(call, self.timeout)))

    def compare_group(self, label: str, names: list[str], exp, got, options: LoadOptions,
                      tag: str) -> list[Divergence]:
        start = time.perf_counter()
        expected = {n: exp.state[n] for n in names if n in exp.state}
        found = {n: got.state[n] for n in names if n in got.state}
        # FP8 divergences are re-judged per logical matrix (codes and scales together)
        # after the group: its tensors stay until then. Any other tensor's pages go back
        # as soon as it is compared, so the comparison holds one tensor, not one layer.
        fp8 = any(t.dtype in FP8_DTYPES for t in expected.values())
        divergences = []
        for name in names:
            self.reference.fill([name])
            one = {name: expected[name]} if name in expected else {}
            divergences += compare_states(one, {name: found[name]} if name in found else {},
                                          skip_values=exp.missing, where=self.where(options))
            if not fp8:
                _release(list(one.values()))
        if fp8:  # one report per matrix
            divergences = refine_quantized(divergences, exp.state, got.state, self.spec,
                                           options)
            _release(list(expected.values()))
        nbytes = sum(_nbytes(t) for t in expected.values())
        self.bytes_compared += nbytes
        self.largest_group = max(self.largest_group, nbytes)
        seconds = time.perf_counter() - start
        verdict = "equal" if not divergences else f"{len(divergences)} DIVERGE: " + ", ".join(
            sorted({d.subject for d in divergences})[:4])
        self.say(f"{tag}{label}: {len(expected)} tensors, {nbytes / 1e6:.1f} MB, "
                 f"{seconds:.2f} s: {verdict}")
        self._record(f"{tag}{label}".replace(": ", " "), divergences, options)
        return divergences

    def where(self, options: LoadOptions) -> Callable[[str], str]:
        def text(name: str) -> str:
            parts = []
            if name in self.weight_map:
                parts.append(f"checkpoint key in {self.weight_map[name]}")
            if options.tp_size > 1:
                parts.append(f"tp rank {options.tp_rank}/{options.tp_size}")
            return "; ".join(parts)
        return text

    # ----- records ----------------------------------------------------------------------
    def rerun_command(self) -> str:
        parts = ["python", "-m", "conformance.differential", "--loader", self.loader_name,
                 "--checkpoint", str(self.checkpoint)]
        if self.tp_size > 1:
            parts += ["--tp", str(self.tp_size)]
        if isinstance(self.candidate, IsolatedLoader):
            parts += ["--isolate", "--candidate-timeout", f"{self.timeout:g}"]
        return " ".join(shlex.quote(p) for p in parts)

    def _record(self, group: str, divergences: list[Divergence], options: LoadOptions) -> None:
        """One divergence record per group that diverges, in the shape `fail_on` writes."""
        if not divergences:
            return
        self.divergent += 1
        case = f"{self.checkpoint} ({group}) | {self.spec.summary()}"
        self.records.write({
            "type": "divergence", "stage": "final", "property": PROPERTY,
            "test": f"differential::{group}", "loader": self.loader_name,
            "severity": min((d.severity for d in divergences), key=SEVERITIES.index),
            "case": case, "spec": self.spec.to_dict(), "checkpoint": str(self.checkpoint),
            "options": options.summary(), "plan": "", "rerun": self.rerun_command(),
            "examples_before_failure": 0, "divergences": [d.to_json() for d in divergences]})

    # ----- the whole run ----------------------------------------------------------------
    def run(self) -> int:
        self.say(f"loadcheck differential: {self.loader_name} "
                 f"{getattr(self.candidate, 'version', '?')} vs the reference on "
                 f"{self.checkpoint}")
        self.say(f"  spec from config.json: {self.spec.summary()}")
        started, divergences = time.perf_counter(), []
        cpu_started = time.process_time()
        for rank in range(self.tp_size):
            divergences += self.run_rank(rank)
            if self.stopped:
                what = "hung" if self.stopped == "hang" else "crashed"
                self.say(f"STOPPED: the candidate {what}; nothing further is compared"
                         + ("" if isinstance(self.candidate, IsolatedLoader) else
                            "; run with --isolate to contain a crash (a process that dies "
                            "in process ends this run without a record)"))
                break
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started  # less disturbed than wall time on a busy host
        peak = self.peak
        self.say(f"{'DIVERGES' if divergences else 'EQUAL'}: {len(divergences)} divergences; "
                 f"{self.bytes_compared / 1e9:.3f} GB compared in {seconds:.2f} s "
                 f"(CPU {cpu:.2f} s) "
                 f"({self.bytes_compared / 1e9 / max(seconds, 1e-9):.2f} GB/s end to end, "
                 f"both loads included); peak RSS while comparing {peak / 1e9:.2f} GB, "
                 f"{max(0, peak - self.candidate_rss) / 1e9:.3f} GB above the candidate's "
                 f"loaded model (largest group {self.largest_group / 1e9:.3f} GB)"
                 + (f"; records in {self.records.path}" if divergences else ""))
        for d in divergences[:20]:
            self.say(f"  - {d.message}")
        if len(divergences) > 20:
            self.say(f"  ... and {len(divergences) - 20} more (see the records)")
        return 1 if divergences else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.differential",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--loader", required=True, help="as for `pytest conformance --loader`")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="an HF checkpoint directory (config.json + safetensors; a "
                             "hub-cache snapshot directory works)")
    parser.add_argument("--tp", type=int, default=1, help="simulated tensor-parallel ranks")
    parser.add_argument("--no-poison", action="store_true",
                        help="do not ask the candidate to poison its allocations (by default "
                             "a candidate claiming 'poison' does, so an unwritten slot shows)")
    parser.add_argument("--candidate-timeout", type=float, default=None, metavar="SECONDS",
                        help="report the candidate as hung after this long (default: 600 s "
                             "+ 60 s per GB of safetensors)")
    parser.add_argument("--isolate", action="store_true",
                        help="load the candidate in a child process, so a crash or a hang "
                             "is a record and a line, not the end of the run (its result "
                             "comes back through a temporary safetensors file: slower)")
    parser.add_argument("--isolate-memory", type=int, default=None, metavar="MIB",
                        help="with --isolate: address space the candidate's load may add")
    parser.add_argument("--records", type=Path, default=Path("results/differential"),
                        help="directory for divergence records (default %(default)s)")
    args = parser.parse_args(argv)
    if not (args.checkpoint / CONFIG_FILE).is_file():
        print(f"ERROR: {args.checkpoint} has no {CONFIG_FILE}", file=sys.stderr)
        return 2
    try:
        candidate = resolve(args.loader)
    except LoaderResolutionError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if args.tp > 1 and "tp" not in candidate.capabilities:
        print(f"ERROR: --tp {args.tp}: loader {args.loader!r} does not claim 'tp'",
              file=sys.stderr)
        return 2
    timeout = args.candidate_timeout or default_timeout(args.checkpoint)
    if args.isolate:
        candidate = IsolatedLoader(args.loader, candidate, timeout, args.isolate_memory)
    records = RecordWriter(args.records, "differential", new_run_id())
    try:
        run = Differential(args.checkpoint, args.loader, candidate, records, args.tp,
                           poison=not args.no_poison, timeout=timeout)
    except (UnsupportedConfigError, LoadError, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    meta = run_metadata(loader=args.loader, loader_version=str(
        getattr(candidate, "version", "?")), device="cpu", profile=PROPERTY, seed=None,
        records=records.directory)
    replace_cell(records.directory, meta, records.run_id)
    records.write(meta)
    status = run.run()
    records.write({"type": "end", "exitstatus": status, "tests": 1})
    return status


if __name__ == "__main__":
    sys.exit(main())
