"""P3m (MXFP4): the packed codes are read high nibble first (element 2j taken from the high
nibble of byte j), where every MXFP4 reader (transformers' convert_moe_packed_tensors,
triton_kernels, compressed-tensors, vLLM) puts element 2j in the low nibble: each pair of
neighbouring weights is exchanged, every shape and scale stays right."""
from . import Catch, Mutant

CATCH = Catch(bug="MXFP4 nibble order swapped (high nibble read as the even element)",
              test="test_mxfp4.py::test_mxfp4_checkpoint_matches_reference",
              names=r"_proj.*: block \(row \d+, group \d+\) .*weight_scale expected 2\^-?\d+ "
                    r"\(byte \d+\), found 2\^-?\d+ \(byte \d+\); [1-9]\d* codes differ in that "
                    r"block \(col \d+: code \d+")


class NibblesSwapped(Mutant):
    def finish(self, model, options):
        quant = model.spec.quant
        if quant is not None and quant.format == "mxfp4":
            views = model.canonical_views()
            for name in model.spec.quantized_weights():
                view = views[name]
                view.copy_((view << 4) | (view >> 4))
        super().finish(model, options)


loader = NibblesSwapped(__name__)
