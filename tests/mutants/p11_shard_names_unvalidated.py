"""P11 (transformers #47176): shard names from weight_map are joined onto the directory
without validation, so `../x`, `sub/x`, absolute paths and symlinks are followed out of it."""
import json
from pathlib import Path

from reference.checkpoint import Checkpoint, read_header

from . import Catch, Mutant

CATCH = Catch(bug="joins weight_map shard names without validation (transformers #47176)",
              test="test_hostile.py::test_named_hostile_checkpoint_is_refused",
              names=r"\[critical\].*unsafe_checkpoint")


class FollowsShardNames(Mutant):
    def open(self, checkpoint):
        directory = Path(checkpoint)
        index_path = directory / "model.safetensors.index.json"
        if not index_path.exists():
            return super().open(checkpoint)
        weight_map = json.loads(index_path.read_text())["weight_map"]
        entries = {}
        for name in sorted(set(weight_map.values())):
            headers = read_header(directory / name)  # the bug: `name` may leave the directory
            entries.update({k: e for k, e in headers.items() if weight_map.get(k) == name})
        return Checkpoint(directory, entries)  # entries keep the names they were found by


loader = FollowsShardNames(__name__)
