import json
import os
import time

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import (
    build_metadata,
    metadata_from_domain_xml,
    parse_metadata,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Plan, Timings
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import (
    read_json,
    write_json_atomic,
)


def test_metadata_round_trip():
    data = {"placement": {"mode": "shared", "cpu_shares": 2048}, "vse": {"name": "web", "digest": "ab12"}}
    xml = build_metadata(data)
    assert xml.startswith("<hpcvirt:regime")
    assert parse_metadata(xml) == {"placement": {"mode": "shared", "cpu_shares": "2048"},
                                   "vse": {"name": "web", "digest": "ab12"}}


def test_metadata_leaves_out_none_and_survives_garbage():
    assert "partition" not in build_metadata({"placement": {"mode": "shared", "partition": None}})
    assert parse_metadata("") == {}
    assert parse_metadata("<not xml") == {}


def test_metadata_inside_domain_ignores_other_namespaces():
    xml = ("<domain><metadata><other:x xmlns:other='urn:x'><other:placement mode='no'/></other:x>%s"
           "</metadata></domain>" % build_metadata({"placement": {"mode": "dedicated"}}))
    assert metadata_from_domain_xml(xml) == {"placement": {"mode": "dedicated"}}
    assert metadata_from_domain_xml("<domain/>") == {}


def test_plan_diff_and_list():
    plan = Plan()
    assert not plan and not plan.changed
    plan.add("write", "/a/cpuset.cpus", "0-3", "0-1", reason="shrink pool")
    plan.add("write", "/a/cpuset.cpus", "0-1", "0")
    assert plan.changed and len(plan) == 2
    assert plan.to_list()[0] == {"action": "write", "target": "/a/cpuset.cpus", "before": "0-3",
                                 "after": "0-1", "reason": "shrink pool"}
    # The diff shows where a target started and where it ended, not every hop.
    assert plan.diff("node") == {"before": {"write /a/cpuset.cpus": "0-3"},
                                 "after": {"write /a/cpuset.cpus": "0"},
                                 "before_header": "node", "after_header": "node"}


def test_timings_sum_repeated_names():
    timings = Timings()
    timings.add("pin", 1.5)
    timings.add("pin", 2.0)
    with timings.measure("other"):
        time.sleep(0.02)
    assert timings.to_dict()["pin"] == 3.5
    assert 15.0 <= timings.to_dict()["other"] < 10000.0     # milliseconds, not seconds


def test_state_files_atomic(tmp_path):
    root = str(tmp_path)
    assert read_json(root, "var/lib/hpcvirt/regime.json") is None
    write_json_atomic(root, "var/lib/hpcvirt/regime.json", {"regime": "mixed"})
    assert read_json(root, "var/lib/hpcvirt/regime.json") == {"regime": "mixed"}
    assert os.listdir(str(tmp_path / "var/lib/hpcvirt")) == ["regime.json"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(root, "bad.json")


def test_state_write_failure_leaves_old_file(tmp_path):
    root = str(tmp_path)
    write_json_atomic(root, "x.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(root, "x.json", {"a": object()})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert os.listdir(root) == ["x.json"]
