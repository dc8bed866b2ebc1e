#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: characterise
short_description: Measure OS noise natively or inside a guest, with and without load and confinement
version_added: 0.1.0
description:
  - Runs the noise probe (a selfish-detour loop, C(tools/noise)) natively on one CPU, or reads it from
    a running tiny guest's serial console, for O(seconds) per cell, for every combination of
    O(loads) and O(confinement), and returns one figure set per cell (longest detour, noise share
    in parts per million, detours per second).
  - A C(host) load is one busy task per online CPU started as an ordinary host task; it ends by
    itself. C(confined) confines the host to the housekeeping CPUs for the cell (every movable task,
    kernel threads that accept it, the workqueue and default IRQ masks); the node's confinement is
    put back as it was found at the end, also after a failure (a journal covers a killed run).
  - A native probe runs in a transient cpuset cgroup holding only its CPU, so it may use a partition
    CPU while the host is confined.
  - See docs/isolation.md for how to read the figures; M(hpcvirt.regime.characterise) changes
    nothing durable, so it reports C(changed=false).
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
attributes:
  check_mode:
    support: full
    description: Validates the request and returns the cells it would measure; runs and changes nothing.
  diff_mode:
    support: none
    description: Leaves the node as found, so there is nothing to show.
  platform:
    support: full
    platforms: posix
    description: Runs on a Linux node with cpuset cgroups (v1 or v2).
options:
  environment:
    description: C(native) (the probe on a host CPU) or C(guest) (the probe inside O(guest)).
    type: str
    required: true
    choices: [native, guest]
  target:
    description: For C(native), which CPU of the layout; the first partition CPU or the first pool CPU outside partitions.
    type: str
    choices: [partition, pool]
  cpu:
    description: For C(native), the CPU to probe (instead of O(target)).
    type: int
  guest:
    description: For C(guest), the running domain whose console carries the probe's lines (the tiny guest).
    type: str
  label:
    description: A name for the cells in the report (for example C(dedicated)); 1-32 letters, digits, C(_.-).
    type: str
  loads:
    description: Host loads to measure under.
    type: list
    elements: str
    choices: [none, host]
    default: [none, host]
  confinement:
    description: Confinement states to measure in (measured in this order).
    type: list
    elements: str
    choices: [unconfined, confined]
    default: [unconfined, confined]
  seconds:
    description: Length of each cell, 1-600.
    type: int
    default: 10
  interval_ms:
    description: Probe report interval for native cells, 100-10000 (a guest reports at its own C(hpcvirt.noise_ms)).
    type: int
    default: 1000
  threshold_us:
    description: Detour threshold of native cells in microseconds.
    type: float
    default: 2.0
  housekeeping:
    description: Housekeeping CPUs to confine to; default the layout file's.
    type: str
  probe:
    description: The static probe binary on the node (C(make noise) installs it).
    type: path
    default: /usr/local/libexec/hpcvirt-noise
  layout_file:
    description: The partition layout file.
    type: path
    default: /etc/hpcvirt/layout.json
"""

EXAMPLES = r"""
- name: Noise on the first partition CPU, idle and under load, before and after confinement
  hpcvirt.regime.characterise:
    environment: native
    target: partition
    seconds: 10
  register: partition_noise

- name: Noise inside a dedicated guest
  hpcvirt.regime.characterise:
    environment: guest
    guest: hpcvirt-char-1
    label: dedicated
"""

RETURN = r"""
cells:
  description:
    - One per measured cell - environment, label, cpu (the guest's vCPU host CPUs for C(guest)), load,
      confinement, started (epoch seconds), seconds, intervals, span_us (time the probe spun), count,
      total_us, max_us (longest detour), noise_ppm (share of the spun time lost), detours_per_s, threshold_us.
  returned: always
  type: list
  elements: dict
cells_planned:
  description: The (confinement, load) cells in measuring order; what check mode would measure.
  returned: always
  type: list
  elements: dict
measured:
  description: Whether the cells were measured (false in check mode).
  returned: always
  type: bool
report:
  description: The cells as an aligned table, line by line.
  returned: when measured
  type: list
  elements: str
confinement_readback:
  description: For C(confined) - whether it held, tasks that escaped, per-CPU kernel threads that cannot move, tasks left in other cgroups, refusals.
  returned: when measured
  type: dict
confinement_found:
  description: The confinement state found, to which the node was put back.
  returned: when measured
  type: dict
interrupted_run:
  description: A previous run was killed part-way; its found state was restored.
  returned: when measured
  type: bool
request:
  description: The request with every value decided (CPU, housekeeping, label).
  returned: always
  type: dict
timings:
  description: Milliseconds of the confinement steps and of the whole measurement.
  returned: when measured
  type: dict
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _characterise, _libvirt
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main


@module_main(_characterise.argument_spec, supports_check_mode=True)
def main(module):
    module.exit_json(**_characterise.run(module, _libvirt))


if __name__ == "__main__":
    main()
