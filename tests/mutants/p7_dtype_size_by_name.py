r"""P7 (accelerate #4063): a dtype's size parsed from its name with a regex anchored at the
end (`...(\d+)$`), which fails on float8_e4m3fnuz, float8_e8m0fnu, float8_e4m3fn and the
FP4 pair type, whose names end in letters."""
import re

from . import Catch, Mutant

CATCH = Catch(bug="dtype size from a name regex (accelerate #4063)",
              test="test_bytes.py::test_parameter_bytes_for_every_dtype",
              names=r"parameter_bytes raised AttributeError|\d+ bytes, expected \d+ "
                    r"\(torch\.(float8|float4|u?int[1-7])")


class SizeByName(Mutant):
    def parameter_bytes(self, result):
        out = {}
        for name, t in result.state.items():
            if t.dtype.is_floating_point and "float8" not in str(t.dtype) \
                    and "float4" not in str(t.dtype) or str(t.dtype) == "torch.bool":
                bits = 8 if t.dtype.itemsize == 1 else t.dtype.itemsize * 8
            else:
                bits = int(re.search(r"[^\d](\d+)$", str(t.dtype)).group(1))
            out[name] = t.numel() * bits // 8
        return out


loader = SizeByName(__name__)
