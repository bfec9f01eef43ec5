"""P3b (block FP8): `weight_scale_inv` is read by its name, as the inverse of the scale,
and inverted back: the loader dequantizes with 1 / weight_scale_inv, where vLLM and
transformers multiply by weight_scale_inv itself (reference/quant/fp8_block.py)."""
from . import Catch, Mutant

CATCH = Catch(bug="weight_scale_inv used as a divisor (dequantized with its reciprocal)",
              test="test_fp8_block.py::test_block_fp8_checkpoint_matches_reference",
              names=r"_proj.*: block \(\d+, \d+\) .*weight_scale_inv expected \S+, found \S+")


class ScaleInvAsDivisor(Mutant):
    def finish(self, model, options):
        for name, view in model.canonical_views().items():
            if name.endswith("_scale_inv"):
                view.copy_(view.reciprocal())
        super().finish(model, options)


loader = ScaleInvAsDivisor(__name__)
