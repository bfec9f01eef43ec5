"""P9 (accelerate #4083): host copies of offloaded weights are taken into one buffer per
shape and dtype, so every offloaded weight of a shape ends up holding the last one's value."""
import torch

from reference.offload import PrefetchOffloader

from . import Catch, Mutant

CATCH = Catch(bug="offloaded weights share one host storage (accelerate #4083)",
              test="test_offload.py::test_offloaded_equals_resident_and_lives_on_the_host",
              names=r"(?s)elements differ.*onloaded from the host")


class SharedHostCopies(PrefetchOffloader):
    def __init__(self, model, plan, device):
        super().__init__(model, plan, device)
        shared: dict = {}
        for name, host in self.host.items():
            key = (tuple(host.shape), host.dtype)
            buffer = shared.setdefault(key, torch.empty_like(host))
            buffer.copy_(host)          # the last weight of this shape wins
            self.host[name] = buffer
        for params in self.layers.values():
            for name, param in params:
                param.data = self.host[name]


class HostCopiesShared(Mutant):
    offloader = SharedHostCopies


loader = HostCopiesShared(__name__)
