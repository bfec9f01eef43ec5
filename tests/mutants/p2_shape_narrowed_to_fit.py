"""Shape rules: a checkpoint tensor with more rows than its parameter is silently narrowed
to fit (its first rows loaded) instead of refused, as loaders padding vocabularies do."""
from dataclasses import replace

from . import Catch, Mutant

CATCH = Catch(bug="oversized checkpoint tensor silently narrowed to the parameter's rows",
              test="test_loading.py::test_shape_mismatch_is_an_error",
              names=r"ShapeMismatchError.*expected shape")


class NarrowsToFit(Mutant):
    def plan(self, spec, entries, options):
        table, fitted = self.key_table(spec), dict(entries)
        for key, entry in entries.items():
            target = table.get(key)
            if target is not None and entry.shape and target.shape \
                    and entry.shape[1:] == target.shape[1:] and entry.shape[0] > target.shape[0]:
                fitted[key] = replace(entry, shape=target.shape,
                                      nbytes=entry.row_bytes * target.shape[0])
        return super().plan(spec, fitted, options)


loader = NarrowsToFit(__name__)
