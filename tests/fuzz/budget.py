"""How many cases each fuzz target runs: a few in `make test`, thousands in `make fuzz`.

`CORPUS_CACHE_FUZZ_EXAMPLES` sets the count for the main targets; the slower targets run
a share of it. Unset, every target runs the handful of cases given as its default.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("CORPUS_CACHE_FUZZ_EXAMPLES", "0"))

# Fuzz cases share a server and a folder across examples, and some are large on purpose.
_RELAXED = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.function_scoped_fixture,
    HealthCheck.filter_too_much,
]


def fuzz_settings(default: int, share: float = 1.0) -> settings:
    """`default` cases, or `share` of CORPUS_CACHE_FUZZ_EXAMPLES when it is set."""
    examples = max(1, int(FUZZ_EXAMPLES * share)) if FUZZ_EXAMPLES else default
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=30) if FUZZ_EXAMPLES else None,
        suppress_health_check=_RELAXED,
        print_blob=True,
    )
