"""P3b (block FP8, vLLM-style fused q/k/v and gate/up): a shard boundary that is not a
multiple of block_n puts two matrices' rows into one block row of the stacked scale
grid. vLLM refuses it (validate_fp8_block_shape); this loader declares the same fusion
but loads on, silently. The expected outcome is the refusal, which names the fused
matrix, the boundary row and the block row."""

from reference.contract import QuantSpec
from reference.quant import format_of
from . import Catch, Mutant

CATCH = Catch(bug="fused shard boundary inside a block loaded silently (vLLM refuses it)",
              test="test_fp8_block.py::test_block_fp8_checkpoint_matches_reference",
              names=r"(qkv_proj|gate_up_proj): \w+ starts at row \d+ .*block row \d+")


class FusedBoundaryMisaligned(Mutant):
    def check_quant_layout(self, spec, options):
        quant = spec.quant or (QuantSpec("fp8_block", options.quant_block)
                               if options.quant_block else None)
        if quant is not None:  # only the TP rule: the fused-shard rule forgotten
            format_of(quant).check_layout(quant, spec, options.tp_size,
                                          {**self.variants, "fp8_block_fusion": "per_module"})


loader = FusedBoundaryMisaligned(__name__)
