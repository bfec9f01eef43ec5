"""P1, `vocab_shards=padded64`: the loader pads the vocabulary like vLLM's
VocabParallelEmbedding, but a check written for the even split still asserts
`vocab_size % tp_size == 0`, so a vocabulary the padding exists for (32001, 151646 with
tp 4) is refused. Only a generated V % tp != 0 shows it."""
from reference.contract import UnsupportedLayoutError

from . import Catch, Mutant

CATCH = Catch(bug="padded vocabulary declared, V % tp != 0 still refused",
              test="test_loading.py::test_gathered_ranks_equal_tp1",
              names=r"vocab_size=\d+ is not divisible")


class RefusesUnevenVocab(Mutant):
    def __init__(self, name):
        super().__init__(name)
        self.variants.update(vocab_shards="padded64")

    def load(self, checkpoint, spec, options):
        if spec.vocab_size % options.tp_size:
            raise UnsupportedLayoutError(f"vocab_size={spec.vocab_size} is not divisible by "
                                         f"tp_size={options.tp_size}", subject="vocab_size")
        return super().load(checkpoint, spec, options)


loader = RefusesUnevenVocab(__name__)
