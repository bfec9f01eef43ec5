"""Errors compared by subject: the key, tensor or file an error names, and every name a
missing-weights or unexpected-keys error lists, against what the reference's problems of
that family name (`LoadError.accepted_subjects`, `accepted_names`). Structured fields
only, never messages. A candidate error that names nothing (subject None, names empty) is
not compared: its adapter does not say."""

from __future__ import annotations

from reference.contract import LoadError

from .compare import Divergence

__all__ = ["SUBJECT_FAMILIES", "subject_divergences"]

# Families whose subject is one tensor or one name set; files and layouts (corrupt,
# unsafe, unsupported layout) are named in more than one right way.
SUBJECT_FAMILIES = frozenset({"shape_mismatch", "unsupported_dtype", "non_finite", "missing",
                              "unexpected"})


def subject_divergences(expected: LoadError, found: LoadError) -> list[Divergence]:
    """The candidate raised an accepted family; does it name what the reference names?"""
    family = found.family
    if family not in SUBJECT_FAMILIES:
        return []
    accepted = getattr(expected, "accepted_subjects", {}).get(family)
    want_names = getattr(expected, "accepted_names", {}).get(family)
    names = frozenset(getattr(found, "names", ()) or ())
    detail = {"expected_family": expected.family, "found_family": family,
              "found_subject": found.subject}
    out = []
    if found.subject is not None and accepted and found.subject not in accepted \
            and not (want_names and found.subject in want_names):
        out.append(Divergence("error", str(found.subject), (
            f"the {family} error names {found.subject!r}; the reference's names "
            f"{' or '.join(repr(s) for s in sorted(accepted))} (LoadError.subject; see the "
            f"error_subject variant for key vs canonical names)"),
            {**detail, "expected_subject": sorted(accepted)}, finding="error_subject",
            expected_family=expected.family, found_family=family,
            expected=" or ".join(sorted(accepted)), found=str(found.subject)))
    if names and want_names is not None and names != want_names:
        lacking, extra = sorted(want_names - names), sorted(names - want_names)
        parts = ([f"leaves out {lacking}"] if lacking else []) + (
            [f"wrongly lists {extra}"] if extra else [])
        out.append(Divergence("error", (lacking or extra)[0], (
            f"the {family} error's names (LoadError.names) " + " and ".join(parts)),
            {**detail, "expected_names": sorted(want_names), "found_names": sorted(names)},
            finding="error_subject", expected_family=expected.family, found_family=family,
            expected=f"{len(want_names)} names", found=f"{len(names)} names"))
    return out
