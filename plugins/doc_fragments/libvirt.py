# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI of the node's hypervisor.
      - The module runs on the node, so the default local system URI is usually right. Use
        C(qemu+unix:///system?socket=PATH) for a second libvirtd on the same machine.
    type: str
    default: qemu:///system
requirements:
  - libvirt-python (C(python3-libvirt) on Debian/Ubuntu and RHEL) on the managed node
"""
