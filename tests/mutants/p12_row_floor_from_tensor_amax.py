"""P12, per-row scales: the zero guard looks at the whole tensor (`if w.abs().max() == 0`)
while the scales are per row, so a zero row inside a non-zero weight gets scale 0 and NaN
codes (0 / 0). An all-zero weight, the only zero the generators made before, passes."""
from dataclasses import replace

import torch

from . import Catch, Mutant

CATCH = Catch(bug="per-row scales, zero guard on the tensor: a zero row gets NaN codes",
              test="test_fp8.py::test_online_fp8_matches_reference",
              names=r"weight_scale: expected \d+ per-row values in \[[^]]*\], found \d+ per-row values in \[0,")


class RowFloorFromTensor(Mutant):
    def __init__(self, name):
        super().__init__(name)
        self.variants.update(fp8_unit="row")
        self.fp8_rules = replace(self.fp8_rules, unit="row")

    def quantize_online(self, views, spec, loaded):
        out = super().quantize_online(views, spec, loaded)
        for name, (codes, scale) in out.items():
            rows = views[name].float().abs().amax(dim=-1) == 0
            if bool(views[name].float().abs().max() > 0) and bool(rows.any()):
                codes = torch.where(rows[:, None], float("nan"), codes.float()).to(codes.dtype)
                out[name] = (codes, torch.where(rows, 0.0, scale))
        return out


loader = RowFloorFromTensor(__name__)
