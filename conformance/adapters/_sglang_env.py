"""What SGLang needs before it can load on this CPU machine without its engine (the
SGLang adapter's setup, kept apart so that `sglang.py` is only the translation).

- `prepare_imports()`: SGLang's multimodal modules import torchvision and torchaudio at
  module level, and PyPI's builds of both need CUDA libraries or another torch. Both
  become SGLang's own platform stub (`sglang._platform_stubs._MockModule`: attributes are
  stubs, calls are pass-through decorators), and transformers is told they are absent,
  so that it never takes their code paths with a stub.
- `single_process_groups()`: world size 1 over gloo, the build topology published and the
  model-parallel groups built, as `sglang/test/layer_ut_utils.py::init_single_process_dist`
  does (restated: importing `sglang.test.test_utils` pulls SGLang's benchmark datasets).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import socket
import sys

__all__ = ["prepare_imports", "single_process_groups"]


_STUBBED = ("torchvision", "torchaudio")


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import torchvision...` / `import torchaudio...` -> SGLang's `_MockModule`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        from sglang._platform_stubs import _MockModule
        return _MockModule(spec.name)

    def exec_module(self, module) -> None:
        return None


def prepare_imports() -> None:
    import transformers.utils.import_utils as import_utils
    found = import_utils._is_package_available

    def without_torchvision(name: str, return_version: bool = False):
        if name in _STUBBED:
            return (False, "N/A") if return_version else (False, None)
        return found(name, return_version)
    import_utils._is_package_available = without_torchvision
    if not any(isinstance(f, _TorchvisionStub) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionStub())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_groups() -> None:
    import torch
    from sglang.srt.distributed import parallel_state
    from sglang.srt.distributed.parallel_state import (init_distributed_environment,
                                                       initialize_model_parallel)
    from sglang.srt.runtime_context import SpawnRanks, get_parallel, publish, reset_context
    from sglang.srt.server_args import ServerArgs

    if not torch.distributed.is_initialized():
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{_free_port()}")
    reset_context()
    publish(ServerArgs(model_path="dummy", tp_size=1, ep_size=1, pp_size=1), role="test",
            ranks=SpawnRanks(world_rank=0))
    if parallel_state._WORLD is not None:
        get_parallel().override_permanently(world_group=parallel_state._WORLD)
    initialize_model_parallel(backend="gloo")
