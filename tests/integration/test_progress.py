"""Progress as it goes, on this node: the vse role runs a real fleet in the background and
await_job prints its phase and counts while it runs, then the role's readable report."""

import re

from conftest import run_playbook


def test_fleet_demo_prints_progress_and_a_readable_report(conn):
    run = run_playbook("playbooks/fleet-demo.yml", "-e", "vse_progress_interval=1")
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-2000:]
    # While the 20 members are created and 4 started: at least one line with the phase and time.
    progress = re.findall(r"localhost: fleet hpcvirt-fleet-demo: (\w+)[:,].*?, (\d+) s elapsed", out)
    assert progress, out[-4000:]
    assert re.search(r"localhost: fleet hpcvirt-fleet-demo: done after \d+\.\d s", out)
    # The role's report: a sentence and a member table, no Python or JSON reprs.
    assert "localhost: fleet hpcvirt-fleet-demo: 20 created, 0 updated, 0 kept, 0 removed, 4 started." in out
    assert re.search(r"hpcvirt-fleet-demo-01\s+create\s+running\s+demo-n01\s+net0=10\.77\.2\.1\b", out)
    assert "members of the fleet were removed." in out
    assert "{'" not in out and "['" not in out
    assert not [d for d in conn.listAllDomains() if d.name().startswith("hpcvirt-fleet-demo-")]
