# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # A module that plans a change and executes it: check mode runs the planner only.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: Returns the plan a real run carries out (RV(plan)) and writes nothing on the node.
  diff_mode:
    support: full
    description: Shows each step of the plan, before and after.
  platform:
    support: full
    platforms: posix
    description: Runs on a Linux node with libvirt and QEMU.
"""

    # A module that only reads.
    INFO = r"""
attributes:
  check_mode:
    support: full
    description: Reads only; the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is nothing to show.
  platform:
    support: full
    platforms: posix
    description: Runs on a Linux node with libvirt and QEMU.
"""
