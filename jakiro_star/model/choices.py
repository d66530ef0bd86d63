"""Static draft trees (``*_choices`` lists, the EAGLE-1 format).

A tree is a list of paths. The path ``[a, b, c]`` is the node reached from the root by taking the
draft's a-th most likely token, then the b-th most likely after it, then the c-th (0 = most likely).
Every proper prefix of a path must be in the list as well. The root (the token the base model
has already chosen) is implicit.
"""

# Jakiro*'s default: EAGLE-1's tree plus a sixth level, 26 nodes + root.
mc_sim_7b_63 = [
    [0],
    [1],
    [2],
    [3],
    [0, 0],
    [0, 1],
    [0, 2],
    [1, 0],
    [1, 1],
    [2, 0],
    [2, 1],
    [3, 0],
    [0, 0, 0],
    [0, 0, 1],
    [0, 0, 2],
    [0, 1, 0],
    [0, 1, 1],
    [0, 2, 0],
    [0, 2, 1],
    [1, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 1],
    [0, 0, 0, 2],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0],
]

# EAGLE-1's original tree (depth 5, 25 nodes + root), for comparisons with EAGLE-1.
eagle1_mc_sim_7b_63 = mc_sim_7b_63[:-1]

# A 14-node tree (+ root) for CPUs, where verifying many tree tokens is not free.
small_15 = [
    [0],
    [1],
    [2],
    [0, 0],
    [0, 1],
    [1, 0],
    [2, 0],
    [0, 0, 0],
    [0, 0, 1],
    [0, 1, 0],
    [1, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 1],
    [0, 0, 0, 0, 0],
]

# A chain: the draft's single best guess five tokens deep.
chain_5 = [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]]

NAMED_CHOICES = {
    "mc_sim_7b_63": mc_sim_7b_63,
    "eagle1_mc_sim_7b_63": eagle1_mc_sim_7b_63,
    "small_15": small_15,
    "chain_5": chain_5,
}
