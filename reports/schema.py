"""The records the suite writes and the reports read, defined once.

Every line of `records-<run id>-<worker>.jsonl` is one JSON object with a `schema` version
and a `type`. The suite (conformance/) builds these dataclasses and writes `to_json()`;
reports/ reads lines back through `read_line`, which checks the version and the types of
the fields it knows and upgrades older lines. A divergence carries its facts as fields
(tensor, dtype, slot, checkpoint key and rows, TP rank, counts, differences, expected vs
found, severity, the structural finding); its `message` is a rendering for people, never
parsed back.

Schema 2 (this one) added the typed divergence fields; schema 1 lines (message + a free
`detail` dict) are still read, with `finding` and `headline` filled in from what they hold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["SCHEMA_VERSION", "SUPPORTED_SCHEMAS", "SEVERITIES", "KINDS", "FINDINGS",
           "RECORD_TYPES", "Slot", "Source", "TPSlice", "Counts", "Diffs", "Mark",
           "MismatchMap", "Divergence", "DivergenceRecord", "severity_rank", "worst",
           "read_line", "SchemaError"]

SCHEMA_VERSION = 2
SUPPORTED_SCHEMAS = frozenset({1, 2})

# How bad a divergence is, worst first: a candidate that loads a checkpoint the reference
# refuses as unsafe or corrupt (or unpickles a file); one whose process died; one that
# hung; any other difference.
SEVERITIES = ("critical", "crash", "hang", "divergence")

# What a divergence is about (its `kind`). Baselines match on it, so a kind keeps its name.
KINDS = {
    "tensor": "a tensor's values differ",
    "dtype": "a tensor has another dtype",
    "shape": "a tensor has another shape",
    "absent": "a tensor is missing from the result, or is in it but not a parameter",
    "fp8": "a quantized matrix: its codes, scale or input scale differ",
    "names": "a reported name set (loaded, missing, unexpected, ignored) differs",
    "error": "one side raised and the other did not, or the error families differ",
    "crash": "the candidate's process died",
    "hang": "the candidate did not answer in time",
    "buffer": "a non-persistent buffer differs",
    "alias": "storage sharing (the tied head) differs",
    "placement": "a tensor lives on another device, or was never materialised",
    "bytes": "a reported byte count differs",
    "logits": "the loaded model's forward output differs",
    # issue 15: what a candidate must not do while it is judged
    "checkpoint": "the candidate wrote into or truncated its checkpoint (critical)",
    "global_state": "the candidate changed process state (working directory, default dtype...)",
    "judge": "the candidate rebound a function of the suite or the reference (critical)",
    "process": "the candidate left child processes running",
}

# The structural finding a divergence leads with: what is wrong, in the words a loader
# author fixes it by. The headline of a card and the first line of a terminal failure.
FINDINGS = {
    "unwritten": "never written: still holds the poison pattern",
    "same_slice": "every TP rank holds the same slice",
    "scale": "the FP8 scale differs",
    "input_scale": "the FP8 input scale differs",
    "codes": "the FP8 codes differ under an equal scale",
    "rounding": "values differ by one unit in the last place (rounding)",
    "values": "values differ",
    "non_finite": "NaN or infinity where the reference has a finite value",
    "dtype": "another dtype",
    "shape": "another shape",
    "missing": "absent from the result",
    "extra": "in the result but not a parameter of the model",
    "names": "a reported name set differs",
    "accepted": "loaded a checkpoint the reference refuses",
    "refused": "raised where the reference loads",
    "error_family": "raised another error family",
    "error_subject": "raised the right error family about another tensor, key or name set",
    "exception": "raised an exception outside the error families (unhandled: a crash)",
    "unpickled": "unpickled a checkpoint file",
    "crash": "the process died",
    "hang": "no answer in time",
    "placement": "on another device",
    "meta": "still on the meta device (never materialised)",
    "alias": "storage sharing differs",
    "bytes": "byte count differs",
    "logits": "the forward output differs",
    "checkpoint": "wrote into its checkpoint",
    "global_state": "changed the process's global state",
    "judge": "rebound a function it is judged by",
    "process": "left child processes running",
    "other": "differs",
}

# run: a process's metadata line; collected: the tests the run means to run (its start);
# divergence: a failing example; crash: a test the suite could not judge (its worker died,
# or it failed without a divergence record), with a divergence record's fields; known: a
# divergence the baseline knows; outcome: a test's result; baseline: the baseline's
# verdict; support: the features a process left out of its drawn specs (outside the
# loader's model support), with counts; end: the run finished (with the collected tests
# that never reported).
RECORD_TYPES = ("run", "collected", "divergence", "crash", "known", "outcome", "baseline",
                "support", "end")


class SchemaError(ValueError):
    """A record line that is not a record of a supported schema."""


def severity_rank(severity: str | None) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def worst(severities) -> str:
    return min(severities, key=severity_rank, default="divergence")


@dataclass
class Slot:
    """Where a canonical matrix sits in the fused parameter a loader keeps (q/k/v in
    qkv_proj, gate/up in gate_up_proj)."""
    index: int
    name: str          # k_proj
    fused: str         # model.layers.0.self_attn.qkv_proj
    rows: list[int] | None = None   # [start, stop) of the fused parameter's rows

    def text(self) -> str:
        return f"slot {self.index} ({self.name}) of {self.fused}"


@dataclass
class Source:
    """Where a canonical tensor comes from in the checkpoint."""
    key: str
    rows: list[int] | None = None   # [start, stop) of the key's rows (fused on disk)
    file: str | None = None         # the shard holding the key (sharded checkpoints)

    def text(self) -> str:
        rows = f"rows {self.rows[0]}:{self.rows[1]} of " if self.rows else ""
        return f"{rows}checkpoint key {self.key!r}" + (f" in {self.file}" if self.file else "")


@dataclass
class TPSlice:
    """The slice of the full tensor one tensor-parallel rank holds."""
    rank: int
    size: int
    dim: int
    start: int
    stop: int

    def text(self) -> str:
        return (f"tp rank {self.rank}/{self.size} holds [{self.start}:{self.stop}] of "
                f"dim {self.dim}")


@dataclass
class Counts:
    mismatched: int
    numel: int
    poisoned: int = 0      # mismatched elements that still hold the poison pattern
    non_finite: int = 0    # mismatched elements that are NaN / inf where expected is finite


@dataclass
class Diffs:
    """How far off: absolute and relative, in units in the last place (for float dtypes),
    and for FP8 matrices the error after dequantization."""
    max_abs: float | None = None
    max_rel: float | None = None
    max_ulp: int | None = None
    # [bin label, count]: "1", "2-3", "4-15", "16-255", "256+", "sign", "nan/inf"
    ulp_histogram: list[list[Any]] | None = None
    dequantized_max_abs: float | None = None


@dataclass
class Mark:
    """A boundary drawn on a mismatch map: at row (or column) `at`, labelled."""
    at: int
    label: str


@dataclass
class MismatchMap:
    """Where a 2-D view of a tensor (rows x the rest flattened) is wrong, downsampled to
    at most 32 x 32 cells: each cell the fraction of its elements that differ, and the
    fraction that still hold the poison pattern."""
    shape: list[int]           # the 2-D view's [rows, columns]
    cells: list[list[float]]   # [cell row][cell column] -> fraction differing, 0..1
    poison: list[list[float]] | None = None
    row_marks: list[Mark] = field(default_factory=list)
    col_marks: list[Mark] = field(default_factory=list)


_NESTED = {"slot": Slot, "source": Source, "tp": TPSlice, "counts": Counts, "diffs": Diffs,
           "map": MismatchMap}


@dataclass
class Divergence:
    """One difference between the reference's outcome and the candidate's."""
    kind: str                  # one of KINDS
    subject: str               # the tensor, key, name set or file it is about
    message: str = ""          # the full text, rendered from the fields below
    detail: dict[str, Any] = field(default_factory=dict)   # kind-specific extras
    severity: str = "divergence"
    finding: str = ""          # one of FINDINGS: the structural root cause
    headline: str = ""         # one line: subject and finding, with the figures that matter
    tensor: str | None = None  # the canonical tensor, when it is about one
    dtype: str | None = None
    shape: list[int] | None = None
    slot: Slot | None = None
    source: Source | None = None
    tp: TPSlice | None = None
    counts: Counts | None = None
    diffs: Diffs | None = None
    rows: list[int] | None = None          # [first, last + 1) of the rows that differ
    first_index: list[int] | None = None
    expected: str | None = None            # short texts: a value, a dtype, a family, a scale
    found: str | None = None
    expected_family: str | None = None     # errors: the two outcome families
    found_family: str | None = None
    map: MismatchMap | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SchemaError(f"divergence kind {self.kind!r} is not one of {sorted(KINDS)}")
        if self.severity not in SEVERITIES:
            raise SchemaError(f"severity {self.severity!r} is not one of {SEVERITIES}")
        if not self.finding:
            self.finding = _legacy_finding(self)
        if not self.headline:
            self.headline = self.message.split("\n", 1)[0] or f"{self.subject}: " \
                f"{FINDINGS.get(self.finding, 'differs')}"

    def where(self) -> str:
        """Slot, checkpoint key and TP rank, as one phrase ('' when none is known)."""
        parts = [p.text() for p in (self.slot, self.source, self.tp) if p is not None]
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None and v != {} and v != []}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Divergence":
        if not isinstance(data, Mapping):
            raise SchemaError(f"a divergence is an object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue  # a newer writer's field: ignored, not an error
            nested = _NESTED.get(name)
            values[name] = _nested(nested, value) if nested and value is not None else value
        detail = values.get("detail") or {}
        # schema 1 kept the error families in `detail`
        for name in ("expected_family", "found_family"):
            if values.get(name) is None and detail.get(name):
                values[name] = detail[name]
        try:
            return cls(**values)
        except TypeError as exc:
            raise SchemaError(f"divergence: {exc}") from None


def _nested(kind: type, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{kind.__name__} is an object, not {type(value).__name__}")
    values = dict(value)
    if kind is MismatchMap:
        for axis in ("row_marks", "col_marks"):
            values[axis] = [Mark(**m) for m in values.get(axis) or []]
    try:
        return kind(**{k: v for k, v in values.items()
                       if k in {f.name for f in dataclasses.fields(kind)}})
    except TypeError as exc:
        raise SchemaError(f"{kind.__name__}: {exc}") from None


def _legacy_finding(d: Divergence) -> str:
    """The finding of a divergence written without one (schema 1), from its fields."""
    if d.kind in ("crash", "hang", "dtype", "shape", "names", "alias", "bytes", "logits",
                  "checkpoint", "global_state", "judge", "process"):
        return d.kind
    if d.severity in ("crash", "hang"):
        return d.severity
    if d.kind == "error":
        if d.found_family == "ok" or d.detail.get("found_family") == "ok":
            return "accepted"
        if d.expected_family == "ok" or d.detail.get("expected_family") == "ok":
            return "refused"
        return "error_family"
    if d.kind == "absent":
        return "missing"
    if d.kind == "placement":
        return "meta" if d.detail.get("found") == "meta" else "placement"
    if (d.counts and d.counts.poisoned) or d.detail.get("poisoned"):
        return "unwritten"
    if d.kind in ("tensor", "buffer", "fp8"):
        return "values"
    return "other"


@dataclass
class DivergenceRecord:
    """A failing example of one test: written when first found (`stage: first`), again
    once shrunk (`final`), or, under --baseline-write, as collected (`collected`)."""
    property: str              # "P2 coverage"
    test: str                  # the pytest node id
    loader: str
    stage: str                 # first | final | collected
    severity: str
    case: str                  # the case's one-line summary
    rerun: str                 # the one line that replays it
    signature: str
    divergences: list[Divergence]
    headline: str = ""         # the root cause's headline
    root_cause: int = 0        # index into divergences of the most likely cause
    spec: dict[str, Any] | None = None
    checkpoint: str | None = None
    options: str | None = None
    plan: str | None = None
    examples_before_failure: int | None = None
    repro_checkpoint: str | None = None
    repro_command: str | None = None
    repro_not_copied: list[str] | None = None   # links or special files the copy left out
    type: str = "divergence"

    @property
    def property_id(self) -> str:
        return property_id(self.property)

    def to_json(self) -> dict[str, Any]:
        data = {"schema": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "divergences":
                value = [d.to_json() for d in value]
            if value is not None:
                data[f.name] = value
        data["property_id"] = self.property_id
        return data


def property_id(label: str) -> str:
    """'P2 coverage' -> 'P2' (a property's id is the first word of its label)."""
    return label.split(" ", 1)[0] if label else ""


def read_line(record: Any, where: str) -> dict[str, Any]:
    """One parsed JSON line -> the record as a dict whose divergences are checked and
    upgraded to this schema (a SchemaError naming `where` otherwise)."""
    if not isinstance(record, dict):
        raise SchemaError(f"{where}: a record is a JSON object, not {type(record).__name__}")
    if record.get("schema") not in SUPPORTED_SCHEMAS:
        raise SchemaError(f"{where}: record schema {record.get('schema')!r} is not one of "
                          f"{sorted(SUPPORTED_SCHEMAS)}")
    kind = record.get("type")
    if kind not in RECORD_TYPES:
        raise SchemaError(f"{where}: record type {kind!r} is not one of {RECORD_TYPES}")
    if kind in ("divergence", "crash", "known"):
        items = record.get("divergences")
        if not isinstance(items, list):
            raise SchemaError(f"{where}: a {kind} record has a list of divergences")
        try:
            divergences = [Divergence.from_json(d) for d in items]
        except SchemaError as exc:
            raise SchemaError(f"{where}: {exc}") from None
        # Schema 2 lines are kept as written (checked above; `to_json` would deep-copy every
        # map cell); schema 1 lines get the fields they lacked.
        if record.get("schema") != SCHEMA_VERSION:
            record = dict(record, divergences=[d.to_json() for d in divergences])
        if not record.get("headline") and divergences:
            record["headline"] = divergences[record.get("root_cause") or 0].headline
        record.setdefault("property_id", property_id(str(record.get("property") or "")))
    return record
