"""Errors by subject: a shape error names the key read before the mismatched one (a stale
loop variable in the raise). The family is right, so a comparison by family passes; the
user is sent to the wrong tensor."""
from . import Catch, Mutant

CATCH = Catch(bug="shape error names the previous key, not the mismatched one",
              test="test_loading.py::test_shape_mismatch_is_an_error",
              names=r"the shape_mismatch error names")


class NamesStaleKey(Mutant):
    def plan(self, spec, entries, options):
        plan = super().plan(spec, entries, options)
        keys = sorted(entries)
        for error in plan.problems:
            if error.family == "shape_mismatch" and error.subject in keys:
                error.subject = keys[keys.index(error.subject) - 1]
        return plan


loader = NamesStaleKey(__name__)
