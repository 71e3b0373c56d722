"""The paper's claims as statistics and decision rules (see docs/claims.md).

Modules: ``rules`` (verdicts from an interval: pure functions), ``statistics`` (the statistics,
from tidy tables), ``catalog`` (each claim: its statistic per setting and its rule).
"""

from treemdp.claims import catalog, rules, statistics

__all__ = ["catalog", "rules", "statistics"]
