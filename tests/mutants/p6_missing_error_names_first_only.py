"""Errors by subject: the missing-weights error lists only the first missing parameter
(`raise MissingWeightsError(missing[0])`), so a user who restores it meets the next one on
the next load, and so on. The family is right; the names are not all there."""
from . import Catch, Mutant

CATCH = Catch(bug="missing-weights error lists only the first missing name",
              test="test_tracking.py::test_tracking_on_raises_on_missing",
              names=r"the missing error's names \(LoadError\.names\) leaves out")


class NamesFirstOnly(Mutant):
    def plan(self, spec, entries, options):
        plan = super().plan(spec, entries, options)
        for error in plan.problems:
            if error.family == "missing":
                error.names = frozenset(sorted(error.names)[:1])
        return plan


loader = NamesFirstOnly(__name__)
