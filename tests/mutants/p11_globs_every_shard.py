"""P11: tensors are taken from every *.safetensors file in the directory, the last file
winning, instead of only from the file the index assigns (a stray consolidated file wins)."""
from pathlib import Path

from reference.checkpoint import read_header

from . import Catch, Mutant

CATCH = Catch(bug="loads every *.safetensors in the directory, ignoring the index",
              test="test_sharding.py::test_tensors_come_from_their_indexed_shard",
              names=r"\.(weight|bias)\b")


class GlobsShards(Mutant):
    def entries(self, ckpt):
        entries = dict(ckpt.entries)
        indexed = {e.file for e in entries.values()}
        for path in sorted(Path(ckpt.directory).glob("*.safetensors")):
            if path.name not in indexed:
                entries.update(read_header(path))
        return entries


loader = GlobsShards(__name__)
