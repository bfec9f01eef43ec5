"""P9 (vllm #58178): a post-processing pass after offloading re-allocates every parameter
(`param.data = process(param.data)`), so offloaded parameters land back on the device and
stay there between uses."""
from . import Catch, Mutant

CATCH = Catch(bug="post-processing re-allocates offloaded parameters (vllm #58178)",
              test="test_offload.py::test_offloaded_equals_resident_and_lives_on_the_host",
              names=r"storage on the device between uses, expected the host \(torch\.\w+\)")


class Reallocates(Mutant):
    def offload(self, result, plan):
        handle = super().offload(result, plan)
        for param in result.model.parameters():  # process_weights_after_loading
            param.data = param.data.clone()
        return handle


loader = Reallocates(__name__)
