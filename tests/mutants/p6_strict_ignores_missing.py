"""P6, strict: strict raises on unexpected keys only; a checkpoint that lacks a weight loads
with strict on and the parameter keeps its initial (here: poisoned) values. torch's
load_state_dict(strict=True) raises on both; accelerate's load_checkpoint_in_model(strict=
True) documents "keys must match" and checks only unexpected ones (docs/findings)."""
from . import Catch, Mutant

CATCH = Catch(bug="strict covers unexpected keys only, missing weights load silently",
              test="test_tracking.py::test_strict_raises_on_missing_and_unexpected",
              names=r"MissingWeightsError")


class StrictIgnoresMissing(Mutant):
    def plan(self, spec, entries, options):
        plan = super().plan(spec, entries, options)
        if not options.track:
            plan.problems = [e for e in plan.problems if e.family != "missing"]
        return plan


loader = StrictIgnoresMissing(__name__)
