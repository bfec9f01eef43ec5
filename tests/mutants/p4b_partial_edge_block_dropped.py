"""P4b (online block FP8): only whole blocks are quantized; the partial edge blocks (rows
or columns past the last multiple of the block) are left as zero codes with the floor
scale, as a kernel that tiles by whole blocks and forgets the remainder would."""
import torch

from reference.fp8 import FP8, M512_FLOOR
from reference.quant.fp8_block import quantize_block_weights
from . import Catch, Mutant

CATCH = Catch(bug="partial edge blocks dropped by online block quantization",
              test="test_fp8_block.py::test_online_block_fp8_matches_reference",
              names=r"_proj.*: block \(\d+, \d+\) .*weight_scale_inv expected \S+, found \S+")


class PartialEdgeBlockDropped(Mutant):
    def quantize_online_blocks(self, views, spec, loaded, block):
        out = {}
        bn, bk = block
        for name in spec.quantized_weights():
            if name not in loaded:
                continue
            weight = views[name]
            rows, cols = weight.shape[0] // bn * bn, weight.shape[1] // bk * bk
            codes = torch.zeros(weight.shape, dtype=FP8)
            scales = torch.full((-(-weight.shape[0] // bn), -(-weight.shape[1] // bk)),
                                M512_FLOOR)
            if rows and cols:
                whole = quantize_block_weights({name: weight[:rows, :cols]}, block,
                                               self.fp8_rules)[name]
                codes[:rows, :cols] = whole[0]
                scales[:rows // bn, :cols // bk] = whole[1]
            out[name] = (codes, scales)
        return out


loader = PartialEdgeBlockDropped(__name__)
