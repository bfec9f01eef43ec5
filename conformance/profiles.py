"""Hypothesis profiles. Explicit, because Hypothesis' own `ci` profile is derandomised with
no database, so a nightly run would replay the same examples forever."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

__all__ = ["PROFILES", "DEFAULT_PROFILE", "register_profiles", "fewer_examples"]

DEFAULT_PROFILE = "pr"
PR_EXAMPLES = 100
_common = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _database() -> DirectoryBasedExampleDatabase:
    return DirectoryBasedExampleDatabase(os.environ.get("LOADCHECK_EXAMPLE_DB",
                                                        ".hypothesis/loadcheck-examples"))


# The explain phase re-runs a failure hundreds of times to say which parts vary; on a
# load-and-compare property that costs ~50 s per failure, so only `nightly` keeps it.
_NO_EXPLAIN = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]

PROFILES = {
    # fast local iteration: few examples, random, remembers failures
    "dev": dict(max_examples=10, derandomize=False, phases=_NO_EXPLAIN),
    # pull requests and CI: derandomized, so every run draws the same examples
    "pr": dict(max_examples=PR_EXAMPLES, derandomize=True, database=None, phases=_NO_EXPLAIN),
    # nightly: 10x the examples, random, with a persisted example database
    "nightly": dict(max_examples=10 * PR_EXAMPLES, derandomize=False),
    # replay what the database holds (and shrink it), generate nothing new
    "repro": dict(max_examples=PR_EXAMPLES, derandomize=False,
                  phases=[Phase.explicit, Phase.reuse, Phase.shrink]),
}


def register_profiles() -> None:
    for name, values in PROFILES.items():
        if "database" not in values:
            values = {**values, "database": _database()}
        settings.register_profile(name, **_common, **values)


def fewer_examples(divisor: int) -> settings:
    """A property that loads three or four times per example and is no known bug's catcher
    runs 1/divisor of the profile's examples (at least 10): the pr run keeps its time budget
    and nightly still runs ten times as many. Applied when the test module is imported, after
    the plugin has loaded the profile."""
    return settings(max_examples=max(10, settings.default.max_examples // divisor))
