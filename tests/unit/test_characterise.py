import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._characterise import (
    CharacteriseError,
    cells,
    ratios,
    render_report,
    resolve,
)

LAYOUT = {"housekeeping": "0", "pool": "0,3", "partitions": [{"name": "p1", "cpus": "1-2"}]}
ONLINE = frozenset({0, 1, 2, 3})


def params(**kw):
    base = {"environment": "native", "target": None, "cpu": None, "guest": None, "label": None,
            "loads": ["none", "host"], "confinement": ["unconfined", "confined"], "seconds": 5,
            "interval_ms": 1000, "threshold_us": 2.0, "housekeeping": None, "probe": "/usr/local/libexec/hpcvirt-noise"}
    base.update(kw)
    return base


def test_resolve_targets_from_the_layout():
    assert resolve(params(target="partition"), LAYOUT, ONLINE)["cpu"] == 1
    pool = resolve(params(target="pool"), LAYOUT, ONLINE)
    assert pool["cpu"] == 0 and pool["label"] == "pool" and pool["housekeeping"] == "0"
    assert resolve(params(cpu=3), LAYOUT, ONLINE)["label"] == "cpu3"


def test_cells_measure_unconfined_first():
    request = resolve(params(target="partition"), LAYOUT, ONLINE)
    assert cells(request) == [("unconfined", "none"), ("unconfined", "host"), ("confined", "none"), ("confined", "host")]


@pytest.mark.parametrize("kw, layout, field", [
    ({"seconds": 0, "target": "pool"}, LAYOUT, "seconds"),
    ({"seconds": 601, "target": "pool"}, LAYOUT, "seconds"),
    ({"interval_ms": 50, "target": "pool"}, LAYOUT, "interval_ms"),
    ({"threshold_us": 0.0, "target": "pool"}, LAYOUT, "threshold_us"),
    ({"cpu": 9}, LAYOUT, "cpu"),
    ({}, LAYOUT, "target"),
    ({"target": "partition"}, {"housekeeping": "0", "pool": "0-3", "partitions": []}, "target"),
    ({"target": "pool"}, None, "housekeeping"),
    ({"target": "pool", "housekeeping": "7"}, LAYOUT, "housekeeping"),
    ({"target": "pool", "label": "bad label!"}, LAYOUT, "label"),
    ({"environment": "guest"}, LAYOUT, "guest"),
    ({"environment": "guest", "guest": "a;b"}, LAYOUT, "guest"),
    ({"environment": "guest", "guest": "g1", "cpu": 1}, LAYOUT, "cpu"),
    ({"target": "pool", "guest": "g1"}, LAYOUT, "guest"),
    ({"target": "pool", "loads": []}, LAYOUT, "loads"),
])
def test_resolve_refuses_naming_the_field(kw, layout, field):
    with pytest.raises(CharacteriseError, match=field):
        resolve(params(**kw), layout, ONLINE)


def cell(env, label, load, conf, max_us, ppm, cpu=1):
    return {"environment": env, "label": label, "load": load, "confinement": conf, "cpu": cpu, "guest": "g1",
            "max_us": max_us, "noise_ppm": ppm, "detours_per_s": 10.0, "span_us": 2000000, "threshold_us": 2.0}


def test_report_is_aligned_and_has_ratios():
    cs = [cell("native", "partition", "host", "unconfined", 900.0, 5000.0),
          cell("native", "partition", "host", "confined", 30.0, 50.0),
          cell("guest", "dedicated", "none", "unconfined", 12.5, None)]
    text = render_report(cs, "node1")
    lines = text.splitlines()
    assert lines[0] == "OS noise on node1 (probe threshold 2.0 us)"
    header, rows = lines[1], lines[2:5]
    assert all(len(row) == len(header) for row in rows)
    assert "g1 (cpu 1)" in rows[2] and rows[2].split()[-3] == "-"
    assert ratios(cs) == [{"environment": "native", "label": "partition", "load": "host",
                           "max_us_ratio": 30.0, "noise_ppm_ratio": 100.0}]
    assert "unconfined / confined" in text
