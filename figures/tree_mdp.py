"""Figure `Tree-MDP`: the Tree MDP diagram, drawn from a `treemdp.tree.Tree` with networkx.

States S1, S2, … in level order; three actions a0, a1, a2 on the edges; every leaf moves to the
absorbing terminal state s∞ whatever the action (Rafailov et al. 2024, Figure "Tree-MDP").

    python figures/tree_mdp.py [--depth 2] [--out figures/out]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import networkx as nx

from figures import style
from treemdp.tree import TERMINAL, Tree

NAME = "Tree-MDP"


def load(branching: int = 3, depth: int = 2) -> Tree:
    """The tree to draw (no results needed)."""
    return Tree.complete(branching, depth)


def positions(tree: Tree) -> dict:
    """Leaves evenly spaced on the bottom row; each state centred above its children."""
    pos: dict = {}
    for i, leaf in enumerate(tree.leaves.tolist()):
        pos[leaf] = (float(i), -float(tree.depth[leaf]))
    for node in range(tree.n_nodes - 1, -1, -1):
        row = int(tree.internal_index[node])
        if row >= 0:
            kids = [int(c) for c in tree.children[row] if int(c) >= 0]
            pos[node] = (sum(pos[k][0] for k in kids) / len(kids), -float(tree.depth[node]))
    pos[TERMINAL] = ((tree.n_responses - 1) / 2, -float(tree.max_depth + 1.3))
    return pos


def plot(tree: Tree):
    """The diagram as a matplotlib figure."""
    g = tree.to_networkx(terminal=True)
    pos = positions(tree)
    width = max(6.0, 0.55 * tree.n_responses)
    fig, axes = style.new_figure(1)
    fig.set_size_inches(width, 1.5 * (tree.max_depth + 2))
    ax = axes[0]
    labels = {n: f"S{n + 1}" for n in range(tree.n_nodes)}
    labels[TERMINAL] = "s∞"
    tree_edges = [(u, v) for u, v in g.edges if v != TERMINAL]
    leaf_edges = [(u, v) for u, v in g.edges if v == TERMINAL]
    colors = ["#f2c14e" if n == TERMINAL else "#9ecae1" for n in g.nodes]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colors, node_size=520, edgecolors="#333333")
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=8)
    nx.draw_networkx_edges(g, pos, edgelist=tree_edges, ax=ax, arrows=True, node_size=520)
    nx.draw_networkx_edges(
        g, pos, edgelist=leaf_edges, ax=ax, style="dotted", alpha=0.5, arrows=True, node_size=520
    )
    edge_labels = {(u, v): f"a{g.edges[u, v]['action']}" for u, v in tree_edges}
    nx.draw_networkx_edge_labels(g, pos, edge_labels, ax=ax, font_size=7, rotate=False)
    ax.set_title(
        f"Tree MDP: {tree.branching} actions per state, depth {tree.max_depth}, "
        f"{tree.n_responses} responses\nevery leaf moves to the absorbing state s∞ (dotted)"
    )
    ax.axis("off")
    return fig


def main(out: str | Path = "figures/out", branching: int = 3, depth: int = 2) -> list[Path]:
    """Write Tree-MDP.png/.pdf and its caption; return the files written."""
    out = Path(out)
    tree = load(branching, depth)
    written = style.save_figure(plot(tree), out / f"{NAME}.png", pdf=True)
    caption = (
        f"{NAME}: the Tree MDP (b={branching}, D={depth}) drawn from treemdp.tree.Tree.complete; "
        "states S1… in level order, actions a0…a2 on edges, leaves → absorbing s∞. "
        "The experiments use depth 3 (27 responses); depth 2 is drawn for legibility.\n"
    )
    written.append(style.write_caption(out / f"{NAME}.txt", caption))
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--branching", type=int, default=3, help="actions per state [default: 3]")
    parser.add_argument("--depth", type=int, default=2, help="depth to draw [default: 2]")
    parser.add_argument("--out", default="figures/out", help="output folder [default: figures/out]")
    args = parser.parse_args()
    if not 2 <= args.branching <= 5 or not 1 <= args.depth <= 4:
        parser.error("--branching must lie in [2, 5] and --depth in [1, 4] for a legible diagram")
    for path in main(args.out, args.branching, args.depth):
        print(path)
