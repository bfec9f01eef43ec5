"""P11: a parameter fed by two checkpoint keys (split q_proj beside a fused qkv_proj) is
loaded from whichever arrives last instead of refused: the result depends on key order."""
from . import Catch, Mutant

CATCH = Catch(bug="a parameter fed twice: the last key wins instead of an error",
              test="test_sharding.py::test_a_key_fed_twice_is_refused",
              names=r"candidate loaded a checkpoint the reference refuses.*covered twice")


class LastKeyWins(Mutant):
    def plan(self, spec, entries, options):
        plan = super().plan(spec, entries, options)
        plan.problems = [p for p in plan.problems if "covered twice" not in str(p)]
        return plan


loader = LastKeyWins(__name__)
