"""`--loader NAME` -> a validated Loader, or one clear error.

NAME is a built-in (`reference`, `reference-split`), a real-library adapter
(`transformers`, `accelerate`, `torchao`, `vllm`: imported only when named), an importable
module exposing `loader` (an instance) or `make_loader()`, or `module:attr`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from typing import Any

__all__ = ["LoaderResolutionError", "resolve", "ADAPTERS"]

ADAPTERS = {name: f"conformance.adapters.{name}" for name in
            ("transformers", "accelerate", "torchao", "vllm")}
# issue 17: more real candidates (a name with a dash names a module with an underscore)
ADAPTERS.update({name: f"conformance.adapters.{name.replace('-', '_')}" for name in
                 ("fastsafetensors", "transformers-ct", "sglang")})
# issue 16: block-wise FP8 readers
ADAPTERS.update({name: f"conformance.adapters.{name.replace('-', '_')}" for name in
                 ("transformers-fp8-block", "vllm-fp8-block")})
BUILTINS = ("reference", "reference-split")
KNOWN_NAMES = BUILTINS + tuple(sorted(ADAPTERS))


class LoaderResolutionError(Exception):
    pass


def _builtin(name: str) -> Any:
    from reference.loading import ReferenceLoader
    if name == "reference":
        return ReferenceLoader()
    if name == "reference-split":
        loader = ReferenceLoader(fused_params=False)
        loader.name = "reference-split"
        return loader
    return None


def resolve(name: str) -> Any:
    """Import and validate the loader NAME names; raise LoaderResolutionError otherwise."""
    builtin = _builtin(name)
    if builtin is not None:
        return builtin
    module_name, _, attr = (ADAPTERS.get(name, name)).partition(":")
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        hint = (f"adapter {name!r} is not available in this installation"
                if name in ADAPTERS else f"no importable module {module_name!r}")
        close = difflib.get_close_matches(name, KNOWN_NAMES, n=1)
        hint += f"; did you mean {close[0]!r}?" if close and name not in ADAPTERS else "."
        raise LoaderResolutionError(
            f"--loader {name}: {hint} Known names: {', '.join(KNOWN_NAMES)}; or a module "
            f"exposing `loader` or `make_loader()` (on PYTHONPATH), or module:attr")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise LoaderResolutionError(f"--loader {name}: importing {module_name} failed: "
                                    f"{type(exc).__name__}: {exc}") from exc
    candidates = [attr] if attr else ["loader", "make_loader"]
    obj = next((getattr(module, a) for a in candidates if hasattr(module, a)), None)
    if obj is None:
        raise LoaderResolutionError(f"--loader {name}: {module_name} has no "
                                    f"{' or '.join(candidates)}")
    if callable(obj) and not hasattr(obj, "load"):
        obj = obj()
    elif isinstance(obj, type):
        obj = obj()
    from reference.contract import check_loader
    problems = check_loader(obj)
    if problems:
        raise LoaderResolutionError(f"--loader {name}: not a loadcheck Loader: "
                                    + "; ".join(problems))
    return obj
