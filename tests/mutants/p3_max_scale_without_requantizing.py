"""P3 / P4 (the step vllm's requantize_with_max_scale exists for): the fused parameter's
scale slots are replaced by their max, but the codes of each shard are not requantized to
it, so every shard whose own scale was smaller dequantizes too large."""
from . import Catch, Mutant

CATCH = Catch(bug="max scale taken without requantizing the shards",
              test="test_fp8.py::test_serialized_fp8_matches_reference",
              names=r"slot \d \(\w+_proj\) of [\w.]+\): (scale differs|\d+ FP8 codes differ)")


class MaxScaleWithoutRequantizing(Mutant):
    def requantize_serialized(self, views, spec, loaded):
        codes = {n: views[n].clone() for n in spec.quantized_weights()}
        super().requantize_serialized(views, spec, loaded)  # max scales (and input scales)
        for name, original in codes.items():
            views[name].copy_(original)  # ... but the shards keep their old codes


loader = MaxScaleWithoutRequantizing(__name__)
