# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Path options are confined to the directories a site allows.
    DOCUMENTATION = r"""
options:
  allowed_dirs:
    description:
      - Directories, beyond the collection's own (C(/etc/hpcvirt) for the layout file,
        C(/var/lib/hpcvirt) for state, images, consoles and saves), that path options may point
        into. Every path option is resolved (symlinks too) and refused, naming the option, when it
        lies outside them.
    type: list
    elements: path
    default: []
"""
