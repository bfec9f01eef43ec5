"""P4 (vllm #55198's shape: an alternative entry point skipped a step): quantize-on-load
uses the declared fused unit, but the separate quantize(result) entry point quantizes
each logical matrix on its own."""
from dataclasses import replace

from reference.fp8 import quantize_groups
from . import Catch, Mutant

CATCH = Catch(bug="quantize(result) uses another unit than quantize-on-load",
              test="test_fp8.py::test_quantize_after_load_equals_quantize_on_load",
              names=r"slot \d \(\w+_proj\) of [\w.]+\): (scale differs|\d+ FP8 codes differ)")


class QuantizeAfterLoadPerTensor(Mutant):
    def quantize(self, result):
        original = self.quantize_online
        self.quantize_online = lambda views, spec, loaded: quantize_groups(
            {n: views[n] for n in spec.quantized_weights()}, spec,
            replace(self.fp8_rules, unit="tensor"), only=loaded)
        try:
            return super().quantize(result)
        finally:
            self.quantize_online = original


loader = QuantizeAfterLoadPerTensor(__name__)
