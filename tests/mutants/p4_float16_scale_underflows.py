"""P4 (torchao 0.18 quantize_, found by this suite): the scale amax / 448 is computed in the
weight's dtype with no floor, as declared; in float16 it underflows to 0 for weights below
about 1.3e-5, and every such weight dequantizes to 0. The reference shares the declared
variants, so only the round-trip bound catches it."""
from dataclasses import replace

from . import Catch, Mutant

CATCH = Catch(bug="float16 online scale underflows to 0 (torchao quantize_)",
              test="test_fp8.py::test_online_fp8_round_trip_is_within_half_a_code_step",
              names=r"more than half a code step away \(scale 0,")


class Float16ScaleUnderflows(Mutant):
    def __init__(self, name):
        super().__init__(name)
        self.variants.update(fp8_scale_dtype="weight", fp8_scale_floor="none",
                             fp8_unit="tensor")
        self.fp8_rules = replace(self.fp8_rules, scale_dtype="weight", floor="none",
                                 unit="tensor")


loader = Float16ScaleUnderflows(__name__)
