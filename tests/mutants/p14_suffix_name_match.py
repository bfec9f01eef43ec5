"""P14 (vllm #48449's kind): keys are matched by suffix and by integer layer number, so
`qq_proj.weight`, `layers.03` and `base_model.` prefixes feed real parameters."""
import re

from . import Catch, Mutant

CATCH = Catch(bug="name mapping by suffix / int(), not exact per dotted component",
              test="test_loading.py::test_name_mapping_is_exact",
              names=r"qq?\w*_(proj|head)\.|layers\.0\d|base_model\.")

_LAYER = re.compile(r"layers\.(\d+)\.")


class SuffixMatch(Mutant):
    def map_key(self, table, key):
        exact = table.get(key)
        if exact is not None:
            return exact
        layer = _LAYER.search(key)
        for known, target in table.items():
            known_layer = _LAYER.search(known)
            same_layer = (layer is None and known_layer is None) or (
                layer is not None and known_layer is not None
                and int(layer.group(1)) == int(known_layer.group(1)))
            if same_layer and key.endswith(".".join(known.split(".")[-2:])):
                return target
        return None


loader = SuffixMatch(__name__)
