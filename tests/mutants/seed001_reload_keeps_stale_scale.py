"""Seed 001 (vllm #38032): reload does not compose with online quantization: the new
weights are quantized, but the weight_scale computed at the first load stays."""
from . import Catch, Mutant

CATCH = Catch(bug="quantized reload keeps the first load's scale (vllm #38032)",
              test="test_reload.py::test_reload_equals_fresh_load",
              names=r"_proj( \(slot \d \(\w+_proj\) of [\w.]+\))?: scale differs: expected \S+, found")


class StaleScaleOnReload(Mutant):
    def reload(self, result, checkpoint, spec, options):
        first = {n: t.clone() for n, t in result.state.items() if n.endswith("weight_scale")}
        out = super().reload(result, checkpoint, spec, options)
        for name, scale in first.items():
            out.state[name].copy_(scale)
        return out


loader = StaleScaleOnReload(__name__)
