"""P3b (block FP8 under tensor parallelism): each rank slices its weight rows (or
columns), but its weight_scale_inv grid always takes the first rank's block rows: every
rank past 0 dequantizes its blocks with another rank's scales."""
from reference.tp import RankSlice

from . import Catch, Mutant

CATCH = Catch(bug="block scale rows not sliced with the weight rows under TP (each rank "
                  "holds rank 0's scale rows)",
              test="test_fp8_block.py::test_block_fp8_ranks_gathered_equal_tp1",
              names=r"_proj.*: block \(\d+, \d+\) .*weight_scale_inv expected \S+, found \S+")


class ScaleRowsNotSliced(Mutant):
    def rank_slice(self, spec, name, options):
        piece = super().rank_slice(spec, name, options)
        if piece is None or not name.endswith("_scale_inv"):
            return piece
        return RankSlice(piece.dim, 0, piece.stop - piece.start)


loader = ScaleRowsNotSliced(__name__)
