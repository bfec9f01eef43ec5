"""P7: sub-byte dtypes (uint1..7, int1..7) counted by bit width (numel x bits / 8) while
torch stores one byte per element: an offloader sizing its pinned buffers this way
under-allocates them."""
import re

from . import Catch, Mutant

CATCH = Catch(bug="sub-byte dtypes counted by bit width, not by storage bytes",
              test="test_bytes.py::test_parameter_bytes_for_every_dtype",
              names=r"model\.extras\.u?int[1-7]_\d+: \d+ bytes, expected")


class SubByteBits(Mutant):
    def parameter_bytes(self, result):
        out = {}
        for name, t in result.state.items():
            sub_byte = re.fullmatch(r"torch\.u?int([1-7])", str(t.dtype))
            width = int(sub_byte.group(1)) if sub_byte else t.element_size() * 8
            out[name] = t.numel() * width // 8
        return out


loader = SubByteBits(__name__)
