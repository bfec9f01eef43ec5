"""P3b (block FP8): the weight_scale_inv grid is kept in the column-major order a GEMM
kernel wants (DeepGEMM-style scale layouts) but read back row-major: the scale of block
(r, c) is taken from another block's position, so most blocks dequantize with a wrong
scale while every shape stays right."""
from . import Catch, Mutant

CATCH = Catch(bug="block scale grid read transposed (column-major layout read row-major)",
              test="test_fp8_block.py::test_block_fp8_checkpoint_matches_reference",
              names=r"_proj.*: block \(\d+, \d+\) .*weight_scale_inv expected \S+, found \S+")


class ScaleGridTransposed(Mutant):
    def finish(self, model, options):
        for name, view in model.canonical_views().items():
            if name.endswith("_scale_inv") and view.dim() == 2:
                view.copy_(view.t().reshape(view.shape).clone())
        super().finish(model, options)


loader = ScaleGridTransposed(__name__)
