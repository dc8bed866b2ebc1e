# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hugepage pools per NUMA node: read, and set with a check of what the kernel granted.

The kernel may grant fewer pages than asked (fragmented memory); ``set_pages`` reads the count
back and reports it, so the caller can roll its own change back.
"""

from __future__ import annotations

import os

from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import HUGEPAGES_DIR, NODE_DIR

ROOT = "/"


def node_path(node, size_kb, root=ROOT):
    path = os.path.join(root, NODE_DIR, "node%d" % node, "hugepages", "hugepages-%dkB" % size_kb, "nr_hugepages")
    if node == 0 and not os.path.exists(path):
        # Kernels without NUMA have only the node-wide pool.
        return os.path.join(root, HUGEPAGES_DIR, "hugepages-%dkB" % size_kb, "nr_hugepages")
    return path


def read_node_pools(topology):
    """NUMA node -> page size in KiB -> pages reserved (the persistent pool)."""
    return {node_id: {size: pool.total for size, pool in node.hugepages.items()}
            for node_id, node in topology.nodes.items()}


def read_count(path):
    with open(path) as handle:
        return int(handle.read().strip())


def set_pages(path, count):
    """Ask for ``count`` pages at ``path``; return how many the kernel actually holds afterwards."""
    with open(path, "w") as handle:
        handle.write("%d\n" % count)
    return read_count(path)
