"""P11 (a real HF-to-own-layout converter): when a directory has no safetensors file, every
`*.bin` file is read with `torch.load(weights_only=False)`, which runs whatever callable the
pickle names. The suite's `pytorch-bin-only` case is a real pickle naming a harmless marker."""
from pathlib import Path

import torch

from . import Catch, Mutant

CATCH = Catch(bug="unpickles pytorch_model.bin with weights_only=False (a real converter)",
              test="test_hostile.py::test_named_hostile_checkpoint_is_refused",
              names=r"\[critical\].*unpickled")


class UnpicklesBinFiles(Mutant):
    def open(self, checkpoint):
        directory = Path(checkpoint)
        if not any(directory.glob("*.safetensors*")):
            for path in sorted(directory.glob("*.bin")):
                torch.load(path, weights_only=False)  # the bug: runs what the file names
        return super().open(checkpoint)  # then refuses, as the reference does


loader = UnpicklesBinFiles(__name__)
