"""P9: the offloader's bookkeeping says offloaded (host between uses, device while the layer
runs) while every storage stays where loading put it. Its placement report matches the
reference's exactly, so only a look at the storages catches it."""
from reference.offload import PrefetchOffloader

from . import Catch, Mutant

CATCH = Catch(bug="placement reported from bookkeeping while the storage never moves",
              test="test_offload.py::test_offloaded_equals_resident_and_lives_on_the_host",
              names=r"reported on the device while layer \d+ is onloaded, but its storage is "
                    r"still the host copy")


class BookkeepingOnly(PrefetchOffloader):
    def __init__(self, model, plan, device):
        resident = {name: param.data for name, param in model.named_parameters()}
        super().__init__(model, plan, device)
        for params in self.layers.values():
            for name, param in params:
                param.data = resident[name]  # the host copy is made, then never used

    def onload(self, layer):
        self.onloaded.add(layer)

    def release(self, layer):
        self.onloaded.discard(layer)

    def placement(self):
        out = {}
        for name, _ in self.model.named_parameters():
            layer = next((l for l, params in self.layers.items()
                          if any(n == name for n, _ in params)), None)
            where = "device" if layer is None or layer in self.onloaded else "host"
            for canonical in self.model.fused_parts.get(name, (name,)):
                out[canonical] = where
        return out


class PlacementBookkeepingOnly(Mutant):
    offloader = BookkeepingOnly


loader = PlacementBookkeepingOnly(__name__)
