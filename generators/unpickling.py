"""How the suite sees that a loader unpickled a checkpoint file, without running anything
harmful: the hostile pickles name `record_unpickling` (a global any unpickler resolves by
importing this module) with a path beside the checkpoint. A loader that unpickles them calls
it, which touches that file; a restricted unpickler (`torch.load(weights_only=True)`)
refuses the global and calls nothing."""

from __future__ import annotations

from pathlib import Path

__all__ = ["UnpicklingMarker", "marker_path", "record_unpickling"]


def marker_path(directory: Path) -> Path:
    """The file a hostile pickle in `directory` touches when unpickled (beside the
    checkpoint, not in it, so the checkpoint stays as written)."""
    return directory.with_name(directory.name + ".UNPICKLED")


def record_unpickling(path: str) -> None:
    try:
        Path(path).touch()
    except OSError:  # a saved repro replayed later: the directory it names is gone
        pass


class UnpicklingMarker:
    """Pickles as a call to `record_unpickling(path)`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (record_unpickling, (self.path,))
