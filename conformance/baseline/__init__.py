"""Known-divergence baselines: what a loader is known to get wrong, so that a run answers
"what is new?".

A baseline is a TOML file of entries. Each entry names a property test and says *what*
diverges there (the kind of divergence, the tensor / key / error it is about), with its class
(`bug` in the loader, `declared` difference the contract cannot express yet, `ours`: a
mistake of the suite still open), an upstream link and the versions it was seen on:

    loader = "torchao"

    [[known]]
    id = "T1"
    test = "test_fp8.py::test_zero_weights_quantize_to_exact_zero"
    class = "bug"
    summary = "an all-zero weight gets scale 0 and NaN codes"
    upstream = "https://github.com/pytorch/ao/issues/4713"
    seen = ["torchao 0.18.0 / torch 2.13.0+cpu"]

    [[known.match]]
    kind = "fp8"
    subject = "model.layers.*.weight"

A divergence is *known* when an entry for its test has a `match` whose every given field
matches it: `kind`, `severity`, `finding`, `expected_family` and `found_family` exactly;
`subject` (the tensor, key or name set) and `test` as patterns where `*` stands for any run
of characters and nothing else is special (so `test_x[case]` is literal); `message` as a
regular expression searched in the message; `case`, a table of features of the example's
case (see CASE_FEATURES), each a `*` pattern. A bug that only a kind of case shows (a
float64 checkpoint rounded twice) says so, so that its entry cannot know a value bug of
another case of the same test:

    [[known.match]]
    kind = "tensor"
    finding = "rounding"
    case = { disk_dtype = "float64", dtype = "*float16" }

Known divergences are reported, not failed; every other divergence of the same example
still fails the test, so a known bug never masks a new one. An entry whose test passes
without it ever matching is *fixed*.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from reports.identity import divergence_key, pattern, short_test, signature
from reports.schema import FINDINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["CLASSES", "MATCH_FIELDS", "CASE_FEATURES", "BaselineError", "Match", "Entry",
           "Baseline", "case_features", "load_baseline", "shipped_baseline", "short_test", "pattern", "divergence_key",
           "signature", "SHIPPED"]

CLASSES = ("bug", "declared", "ours")
MATCH_FIELDS = ("kind", "subject", "message", "severity", "finding", "expected_family",
                "found_family", "case")
# What a `case` match may ask of the example's case: the dtype of float weights on disk, the
# dtype its float parameters load into, the model family, the tensor-parallel size, the
# serialized FP8 scheme ("none" if not), online quantization ("none" if not).
CASE_FEATURES = ("disk_dtype", "dtype", "family", "tp_size", "fp8_checkpoint", "quantize")
SHIPPED = Path(__file__).resolve().parent.parent / "baselines"


class BaselineError(ValueError):
    """A baseline file that cannot be used; the message names the file and the entry."""


def _star_pattern(text: str) -> re.Pattern:
    return re.compile("".join(".*" if part == "*" else re.escape(part)
                              for part in re.split(r"(\*)", text)) + r"\Z", re.S)


def case_features(case: Any) -> dict[str, str]:
    """The CASE_FEATURES of a case (a generators.cases.LoadCase, or anything with a `plan`
    and `options` like it); a feature the case does not have is left out, so a match that
    asks for it does not match."""
    plan, options = getattr(case, "plan", None), getattr(case, "options", None)
    spec = getattr(plan, "spec", None)
    out = {"disk_dtype": getattr(plan, "disk_dtype", None),
           "dtype": getattr(options, "dtype", None) or getattr(spec, "dtype", None),
           "family": getattr(spec, "family", None),
           "tp_size": getattr(options, "tp_size", None)}
    if spec is not None:
        out["fp8_checkpoint"] = getattr(spec, "fp8_checkpoint", None) or "none"
    if options is not None:
        out["quantize"] = getattr(options, "quantize", None) or "none"
    return {name: str(value) for name, value in out.items() if value is not None}


def _detail(divergence: Mapping[str, Any]) -> Mapping[str, Any]:
    detail = divergence.get("detail")
    return detail if isinstance(detail, Mapping) else {}


@dataclass(frozen=True)
class Match:
    kind: str | None = None
    subject: str | None = None
    message: str | None = None
    severity: str | None = None
    finding: str | None = None
    expected_family: str | None = None
    found_family: str | None = None
    case: tuple[tuple[str, str], ...] | None = None   # (feature, pattern) pairs

    def matches(self, divergence: Mapping[str, Any],
                features: Mapping[str, str] | None = None) -> bool:
        """`features`: the example's case_features (None: unknown, so a `case` match fails)."""
        detail = _detail(divergence)
        exact = {"kind": divergence.get("kind"), "severity": divergence.get("severity"),
                 "finding": divergence.get("finding"),
                 "expected_family": detail.get("expected_family"),
                 "found_family": detail.get("found_family")}
        for name, value in exact.items():
            wanted = getattr(self, name)
            if wanted is not None and wanted != value:
                return False
        if self.subject is not None and not _star_pattern(self.subject).match(
                str(divergence.get("subject") or "")):
            return False
        if self.message is not None and not re.search(self.message,
                                                      str(divergence.get("message") or "")):
            return False
        if self.case is not None:
            features = features or {}
            return all(name in features and _star_pattern(wanted).match(features[name])
                       for name, wanted in self.case)
        return True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in MATCH_FIELDS
                               if getattr(self, name) is not None}
        if self.case is not None:
            out["case"] = dict(self.case)
        return out


@dataclass(frozen=True)
class Entry:
    id: str
    test: str
    matches: tuple[Match, ...]
    klass: str = "bug"
    summary: str = ""
    upstream: str = ""
    seen: tuple[str, ...] = ()

    def applies_to(self, nodeid: str) -> bool:
        return bool(_star_pattern(self.test).match(short_test(nodeid)))

    def known(self, divergence: Mapping[str, Any],
              features: Mapping[str, str] | None = None) -> bool:
        return any(m.matches(divergence, features) for m in self.matches)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "test": self.test, "class": self.klass}
        for name in ("summary", "upstream"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.seen:
            out["seen"] = list(self.seen)
        out["match"] = [m.to_dict() for m in self.matches]
        return out


@dataclass
class Baseline:
    path: Path
    loader: str = ""
    entries: list[Entry] = field(default_factory=list)

    def for_test(self, nodeid: str) -> list[Entry]:
        return [e for e in self.entries if e.applies_to(nodeid)]

    def split(self, nodeid: str, divergences: Iterable[Any],
              features: Mapping[str, str] | None = None
              ) -> tuple[dict[str, list[Any]], list[Any]]:
        """(entry id -> the divergences it knows, the divergences no entry knows).
        Divergences may be dicts or objects with the same attributes; `features` are the
        example's case_features (None: unknown, and no `case` match knows anything)."""
        entries = self.for_test(nodeid)
        known: dict[str, list[Any]] = {}
        new = []
        for divergence in divergences:
            view = divergence if isinstance(divergence, Mapping) else vars(divergence)
            entry = next((e for e in entries if e.known(view, features)), None)
            if entry is None:
                new.append(divergence)
            else:
                known.setdefault(entry.id, []).append(divergence)
        return known, new

    def to_dict(self) -> dict[str, Any]:
        return {"loader": self.loader, "known": [e.to_dict() for e in self.entries]}


def _entry(path: Path, number: int, raw: Any) -> Entry:
    where = f"{path}: entry {number}"
    if not isinstance(raw, dict):
        raise BaselineError(f"{where}: not a table")
    if isinstance(raw.get("id"), str):
        where = f"{path}: entry {raw['id']!r}"
    unknown = set(raw) - {"id", "test", "class", "summary", "upstream", "seen", "match"}
    if unknown:
        raise BaselineError(f"{where}: unknown fields {sorted(unknown)}")
    for name in ("id", "test"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise BaselineError(f"{where}: `{name}` must be a non-empty string")
    klass = raw.get("class", "bug")
    if klass not in CLASSES:
        raise BaselineError(f"{where}: class {klass!r} is not one of {list(CLASSES)}")
    matches = raw.get("match")
    if not isinstance(matches, list) or not matches:
        raise BaselineError(f"{where}: needs at least one [[known.match]] table saying what "
                            f"diverges (kind, subject, ...)")
    parsed = []
    for clause in matches:
        if not isinstance(clause, dict) or not clause:
            raise BaselineError(f"{where}: a match must be a non-empty table")
        bad = set(clause) - set(MATCH_FIELDS)
        if bad:
            raise BaselineError(f"{where}: unknown match fields {sorted(bad)} (allowed: "
                                f"{', '.join(MATCH_FIELDS)})")
        clause = dict(clause)
        case = clause.pop("case", None)
        if not all(isinstance(v, str) for v in clause.values()):
            raise BaselineError(f"{where}: match values must be strings")
        if case is not None:
            clause["case"] = _case_clause(where, case)
        if "finding" in clause and clause["finding"] not in FINDINGS:
            raise BaselineError(f"{where}: finding {clause['finding']!r} is not one of "
                                f"{', '.join(sorted(FINDINGS))}")
        if "message" in clause:
            try:
                re.compile(clause["message"])
            except re.error as exc:
                raise BaselineError(f"{where}: message is not a regular expression: {exc}")
        parsed.append(Match(**clause))
    seen = raw.get("seen", [])
    if not isinstance(seen, list) or not all(isinstance(s, str) for s in seen):
        raise BaselineError(f"{where}: `seen` must be a list of strings")
    return Entry(id=raw["id"], test=raw["test"], matches=tuple(parsed), klass=klass,
                 summary=str(raw.get("summary", "")), upstream=str(raw.get("upstream", "")),
                 seen=tuple(seen))


def _case_clause(where: str, case: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(case, dict) or not case:
        raise BaselineError(f"{where}: `case` must be a non-empty table of case features "
                            f"({', '.join(CASE_FEATURES)})")
    unknown = sorted(set(case) - set(CASE_FEATURES))
    if unknown:
        raise BaselineError(f"{where}: unknown case features {unknown} (allowed: "
                            f"{', '.join(CASE_FEATURES)})")
    if not all(isinstance(v, str) for v in case.values()):
        raise BaselineError(f"{where}: case feature values must be strings")
    return tuple(sorted(case.items()))


def load_baseline(path: str | Path) -> Baseline:
    """Read and validate a baseline file; BaselineError names the file and the entry."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read the baseline: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        raise BaselineError(f"{path}: not valid TOML: {exc}")
    unknown = set(data) - {"loader", "known"}
    if unknown:
        raise BaselineError(f"{path}: unknown top-level keys {sorted(unknown)}")
    raw = data.get("known", [])
    if not isinstance(raw, list):
        raise BaselineError(f"{path}: `known` must be an array of tables ([[known]])")
    entries = [_entry(path, i, r) for i, r in enumerate(raw, 1)]
    ids = [e.id for e in entries]
    doubled = sorted({i for i in ids if ids.count(i) > 1})
    if doubled:
        raise BaselineError(f"{path}: entry ids used twice: {doubled}")
    return Baseline(path=path, loader=str(data.get("loader", "")), entries=entries)


def shipped_baseline(name: str) -> Path | None:
    """The baseline shipped for a built-in adapter (`--baseline torchao`), if any."""
    candidate = SHIPPED / f"{name}.toml"
    return candidate if name and "/" not in name and candidate.is_file() else None
