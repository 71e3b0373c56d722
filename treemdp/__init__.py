"""treemdp: an exact engine for over-optimization in direct alignment algorithms on Tree MDPs.

Modules (see DESIGN.md and docs/architecture.md): tree, policy, data, objectives, metrics, optim,
train, theory, scaling, claims; `treemdp.runs` is the run-folder and command-line infrastructure.
"""

__version__ = "0.1.0"
