"""P3m (MXFP4 under tensor parallelism): a row-parallel rank (o_proj, down_proj) slices
its packed weight columns, but its E8M0 scale columns always start at column 0 (the
scale tensor is treated as replicated, like a per-tensor FP8 `weight_scale` of the same
name): every rank past 0 dequantizes its groups with rank 0's scales."""
from reference.tp import RankSlice

from . import Catch, Mutant

CATCH = Catch(bug="MXFP4 scale columns not sliced with the packed columns under TP (each "
                  "row-parallel rank holds rank 0's scale columns)",
              test="test_mxfp4.py::test_mxfp4_ranks_gathered_equal_tp1",
              names=r"(o_proj|down_proj): block \(row \d+, group \d+\) .*weight_scale expected "
                    r"2\^-?\d+ \(byte \d+\), found 2\^-?\d+ \(byte \d+\)")


class ScaleColumnsNotSliced(Mutant):
    def rank_slice(self, spec, name, options):
        piece = super().rank_slice(spec, name, options)
        if piece is None or piece.dim != 1 or spec.quant is None \
                or not name.endswith(".weight_scale"):
            return piece
        return RankSlice(1, 0, piece.stop - piece.start)


loader = ScaleColumnsNotSliced(__name__)
