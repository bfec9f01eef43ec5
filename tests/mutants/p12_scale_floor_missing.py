"""P12 (semantics section 4: vLLM's CUDA kernel has no lower bound on the scale): the loader
declares vLLM's native floor, but computes s = amax / 448 with none, so an all-zero
weight gets s = 0 and NaN codes (0 / 0), and a tiny one a scale below the floor."""
from dataclasses import replace

from reference.fp8 import quantize_groups
from . import Catch, Mutant

CATCH = Catch(bug="online scale without its declared floor: zero weights give NaN codes",
              test="test_fp8.py::test_zero_weights_quantize_to_exact_zero",
              # a zero weight's NaN codes, or (whichever the search meets first) a tiny
              # weight's scale below the declared floor: the same missing floor
              names=r"all-zero weight must quantize to a finite scale|weight_scale: expected")


class ScaleFloorMissing(Mutant):
    def quantize_online(self, views, spec, loaded):
        weights = {n: views[n] for n in spec.quantized_weights()}
        return quantize_groups(weights, spec, replace(self.fp8_rules, floor="none"),
                               only=loaded)


loader = ScaleFloorMissing(__name__)
