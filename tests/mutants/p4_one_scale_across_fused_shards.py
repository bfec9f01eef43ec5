"""P4 (vllm #41021): per-module online scales are declared (fp8_unit "tensor", as HF and
torchao quantize), but the fused q/k/v and gate/up shards get one scale between them."""
from dataclasses import replace

from reference.fp8 import quantize_groups
from . import Catch, Mutant

CATCH = Catch(bug="one online scale across fused shards where per-shard is declared "
                  "(vllm #41021)",
              test="test_fp8.py::test_online_fp8_matches_reference",
              names=r"(k|v|q|gate|up)_proj.*: scale differs: expected")


class OneScaleAcrossShards(Mutant):
    def __init__(self, name):
        super().__init__(name)
        self.variants["fp8_unit"] = "tensor"
        self.fp8_rules = replace(self.fp8_rules, unit="tensor")

    def quantize_online(self, views, spec, loaded):
        weights = {n: views[n] for n in spec.quantized_weights()}
        return quantize_groups(weights, spec, replace(self.fp8_rules, unit="fused"),
                               only=loaded)


loader = OneScaleAcrossShards(__name__)
