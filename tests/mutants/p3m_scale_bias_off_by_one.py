"""P3m (MXFP4): the E8M0 scale is decoded with a bias of 126 instead of 127 (2^(b - 126))
and kept re-encoded in the standard bias: every block's scale is doubled, so the whole
matrix dequantizes to twice its value while every code and shape stays right."""
from . import Catch, Mutant

CATCH = Catch(bug="MXFP4 E8M0 scale exponent bias off by one (every scale doubled)",
              test="test_mxfp4.py::test_mxfp4_checkpoint_matches_reference",
              names=r"_proj.*: block \(row \d+, group \d+\) .*weight_scale expected 2\^(-?\d+) "
                    r"\(byte \d+\), found 2\^-?\d+ \(byte \d+\)")


class ScaleBiasOffByOne(Mutant):
    def finish(self, model, options):
        quant = model.spec.quant
        if quant is not None and quant.format == "mxfp4":
            views = model.canonical_views()
            for name in model.spec.quantized_weights():
                views[name + "_scale"].add_(1)
        super().finish(model, options)


loader = ScaleBiasOffByOne(__name__)
