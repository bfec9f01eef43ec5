"""P9 (transformers #46978's kind): parameters used outside the modules the offloader hooks
(here the RMSNorm weights, applied functionally) are never onloaded: they are read from
the host while their layer runs."""
from reference.offload import PrefetchOffloader

from . import Catch, Mutant

CATCH = Catch(bug="norm weights never onloaded (transformers #46978)",
              test="test_offload.py::test_offloaded_equals_resident_and_lives_on_the_host",
              names=r"layernorm\.weight: storage on the host while layer \d+ is onloaded, "
                    r"expected the device \(torch\.\w+\)")


class SkipsNorms(PrefetchOffloader):
    def onload(self, layer):
        kept = self.layers.get(layer)
        if kept is not None:
            self.layers[layer] = [(n, p) for n, p in kept if "layernorm" not in n]
        try:
            super().onload(layer)
        finally:
            if kept is not None:
                self.layers[layer] = kept


class NormsNeverOnloaded(Mutant):
    offloader = SkipsNorms


loader = NormsNeverOnloaded(__name__)
