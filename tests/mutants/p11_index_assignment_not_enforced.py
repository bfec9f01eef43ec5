"""P11: every key of every shard the index names is loaded, whatever weight_map says: a key
whose shard lists it but weight_map does not is loaded, and one weight_map assigns to a
shard that lacks it is silently missing (transformers, accelerate and vLLM read shards so;
see README "Real loaders")."""
import json
from pathlib import Path

from reference.checkpoint import Checkpoint, read_header
from reference.contract import INDEX_FILE

from . import Catch, Mutant

CATCH = Catch(bug="shard headers trusted over the index's weight_map",
              test="test_sharding.py::test_tensors_come_from_their_indexed_shard",
              names=r"weight_map|has no such tensor|index does not list")


class TrustsShardHeaders(Mutant):
    def open(self, checkpoint):
        directory = Path(checkpoint)
        if not (directory / INDEX_FILE).exists():
            return super().open(checkpoint)
        weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        entries = {}
        for name in sorted(set(weight_map.values())):
            entries.update(read_header(directory / name))
        return Checkpoint(directory, entries)


loader = TrustsShardHeaders(__name__)
