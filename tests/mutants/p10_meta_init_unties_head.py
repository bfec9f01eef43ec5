"""P10 under meta init (the tie_weights-after-init_empty_weights pitfall): materialising
module by module gives the embedding new storage while the tied head keeps its own
(garbage), and nothing re-ties them; the canonical state looks right, the logits do not."""
from . import Catch, Mutant

CATCH = Catch(bug="meta init leaves the tied head on its own (garbage) storage",
              test="test_loading.py::test_forward_logits", names="logits")


class UntiesHead(Mutant):
    def build_model(self, spec, options):
        model = super().build_model(spec, options)
        model._tie = lambda: None  # the bug: never re-tied after materialising
        return model


loader = UntiesHead(__name__)
