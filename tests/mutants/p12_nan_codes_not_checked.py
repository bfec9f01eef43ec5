"""P12: check_finite looks at plain float tensors only, so a NaN code (0x7f / 0xff) in a
serialized FP8 weight loads silently."""
from reference.dtypes import PLAIN_FLOATS
from . import Catch, Mutant

CATCH = Catch(bug="check_finite skips FP8 weights: NaN codes load",
              test="test_fp8.py::test_nan_code_in_fp8_checkpoint_is_refused",
              names=r"candidate loaded a checkpoint the reference refuses: NonFiniteInputError")


class NanCodesNotChecked(Mutant):
    def check_finite(self, plan, state):
        plain = [c for c in plan.copies if state[c.slot.canonical].dtype in PLAIN_FLOATS]
        super().check_finite(type(plan)(copies=plain), state)


loader = NanCodesNotChecked(__name__)
