"""treemdp: an exact engine for over-optimization in direct alignment algorithms on Tree MDPs.

Modules (see DESIGN.md): tree, policy, data, objectives, metrics, optim, train, results, plotting.
"""

__version__ = "0.1.0"
