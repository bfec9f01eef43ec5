"""Seed 001 (vllm #38032): reload writes the new float weights into the live FP8
parameters (a plain cast, since they are FP8 now) and then quantizes those codes again,
treating already-quantized data as weights."""
from dataclasses import replace

from reference.dtypes import FP8_DTYPES
from reference.fp8 import quantize_groups
from reference.loading import ReferenceLoader
from . import Catch, Mutant

CATCH = Catch(bug="quantized reload re-quantizes FP8 codes (vllm #38032)",
              test="test_reload.py::test_reload_equals_fresh_load",
              names=r"slot \d \(\w+_proj\) of [\w.]+\): (scale differs|\d+ FP8 codes differ)")


class ReloadQuantizesCodes(Mutant):
    def reload(self, result, checkpoint, spec, options):
        if options.quantize != "fp8":
            return super().reload(result, checkpoint, spec, options)
        staged = ReferenceLoader.load(self, checkpoint, spec,
                                      replace(options, quantize=None, track=False))
        views = result.model.canonical_views()
        for name in staged.loaded:
            views[name].copy_(staged.state[name])  # float -> FP8 parameter: a bare cast
        codes = {n: views[n].float() for n in spec.quantized_weights()
                 if views[n].dtype in FP8_DTYPES}
        result.model.install_fp8(quantize_groups(codes, spec, self.fp8_rules,
                                                 only=set(staged.loaded)))
        return replace(result, state=result.model.canonical_views())


loader = ReloadQuantizesCodes(__name__)
