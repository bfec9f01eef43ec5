"""P4 (vllm #46400: online scale math differs from the offline export): the online scale
is computed in the weight's own dtype (bfloat16 / float16 amax and division) instead of
float32, so a bf16 model's online codes differ from what an offline export produces."""
import torch

from reference.fp8 import FP8_MAX, M512_FLOOR, quantization_groups, quantize_with_scale
from . import Catch, Mutant

CATCH = Catch(bug="online FP8 scale computed in the weight dtype, not float32 (vllm #46400)",
              test="test_fp8.py::test_online_fp8_matches_reference",
              names=r"_proj( \(slot \d \(\w+_proj\) of [\w.]+\))?: scale (dtype \S+, expected|differs: expected \S+, found)")


class ScaleInWeightDtype(Mutant):
    def quantize_online(self, views, spec, loaded):
        out = {}
        for group in quantization_groups(spec, self.fp8_rules.unit):
            if not set(group) <= loaded:
                continue
            joined = torch.cat([views[n].reshape(-1) for n in group])
            scale = (joined.abs().amax() / FP8_MAX).float().clamp(min=M512_FLOOR)
            for name in group:
                out[name] = (quantize_with_scale(views[name], scale, self.fp8_rules), scale)
        return out


loader = ScaleInWeightDtype(__name__)
