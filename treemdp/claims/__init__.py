"""The paper's claims as statistics and decision rules (see docs/claims.md).

Modules: ``rules`` (verdicts from an interval: pure functions), ``statistics`` (the statistics,
from tidy tables), ``catalog`` (each claim: its statistic per setting and its rule), ``evidence``
(intervals, power and MDE, shuffled-checkpoint nulls, baselines, noise ceilings, held-out splits:
shared by the claims table and the toy-vs-LLM bridge).
"""

from treemdp.claims import catalog, evidence, rules, statistics

__all__ = ["catalog", "evidence", "rules", "statistics"]
