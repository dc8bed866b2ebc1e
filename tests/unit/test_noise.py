import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._noise import (
    NoiseError,
    parse,
    parse_line,
    probe_command,
    run_probe,
    summarise,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONSOLE = """\
[    0.000000] Linux version 6.1.0-57-cloud-amd64
hpcvirt-hb seq=0 up=3.10 boot=6ca8fe8c host=g1 src=disk
hpcvirt-hb seq=1 up=3.20 boot=6ca8fe8c host=g1 src=disk
hpcvirt-noise seq=0 cpu=0 span_us=992062 count=1339 total_us=94680.0 max_us=1995.0 thr_us=2.0
hpcvirt-hb seq=2 up=3.30 boot=6ca8fe8c host=g1 src=disk
hpcvirt-noise seq=1 cpu=0 span_us=992000 count=0 total_us=0.0 max_us=0.0 thr_us=2.0
hpcvirt-noise seq=2 cpu=0 span_us=99"""


def test_parse_line_fields_and_types():
    record = parse_line("hpcvirt-noise seq=7 cpu=3 span_us=500002 count=312 total_us=16320.1 max_us=666.5 thr_us=2.0")
    assert record == {"seq": 7, "cpu": 3, "span_us": 500002, "count": 312, "total_us": 16320.1,
                      "max_us": 666.5, "thr_us": 2.0}


@pytest.mark.parametrize("line", [
    "hpcvirt-hb seq=0 up=3.10 boot=6ca8fe8c host=g1 src=disk",
    "hpcvirt-noise seq=x cpu=0 span_us=1 count=0 total_us=0.0 max_us=0.0 thr_us=2.0",
    "hpcvirt-noise seq=1 cpu=0 span_us=1 count=0",
    "",
])
def test_parse_line_ignores_other_lines(line):
    assert parse_line(line) is None


def test_parse_console_log_keeps_only_complete_noise_lines():
    records = parse(CONSOLE)
    assert [r["seq"] for r in records] == [0, 1]


def test_summarise():
    summary = summarise(parse(CONSOLE))
    assert summary["intervals"] == 2
    assert summary["span_us"] == 1984062
    assert summary["count"] == 1339
    assert summary["max_us"] == 1995.0
    assert summary["noise_ppm"] == round(94680.0 * 1e6 / 1984062, 1)
    assert summary["detours_per_s"] == round(1339 * 1e6 / 1984062, 1)
    assert summary["threshold_us"] == 2.0
    assert summary["cpus"] == [0]


def test_summarise_empty_run():
    summary = summarise([])
    assert summary["intervals"] == 0
    assert summary["noise_ppm"] is None and summary["max_us"] is None


def test_probe_command():
    assert probe_command("/x/hpcvirt-noise", cpu=1, seconds=5, interval_ms=500, threshold_us=1.5) == [
        "/x/hpcvirt-noise", "-d", "5", "-i", "500", "-t", "1.5", "-u", "100", "-c", "1"]


@pytest.mark.parametrize("kwargs, field", [
    ({"seconds": 0}, "seconds"),
    ({"seconds": 3601}, "seconds"),
    ({"interval_ms": 5}, "interval_ms"),
    ({"threshold_us": 0}, "threshold_us"),
    ({"cpu": -1}, "cpu"),
    ({"cpu": "1; rm -rf /"}, "cpu"),
    ({"cpu": True}, "cpu"),
    ({"duty": 0}, "duty"),
])
def test_probe_command_refuses_bad_values(kwargs, field):
    with pytest.raises(NoiseError, match=field):
        probe_command("/x/hpcvirt-noise", **kwargs)


def test_probe_command_wants_an_absolute_path():
    with pytest.raises(NoiseError, match="absolute"):
        probe_command("hpcvirt-noise")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The real probe, compiled from tools/noise with Debian's gcc the way make noise does."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: run make setup")
    out = str(tmp_path_factory.mktemp("noise") / "hpcvirt-noise")
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out,
                    os.path.join(ROOT, "tools", "noise", "hpcvirt-noise.c")], check=True)
    return out


def test_real_probe_output_has_the_parsed_shape(probe):
    records = run_probe(probe, cpu=0, seconds=1, interval_ms=200, threshold_us=2.0)
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    for record in records:
        assert record["cpu"] == 0
        assert record["thr_us"] == 2.0
        assert 0 < record["span_us"] <= 200000 + 5000
        assert record["total_us"] <= record["span_us"]
        assert (record["count"] == 0) == (record["max_us"] == 0.0)
        assert record["max_us"] <= record["total_us"] + 0.1


def test_real_probe_heartbeat_line_keeps_the_documented_format(probe):
    proc = subprocess.run([probe, "-d", "1", "-i", "500", "-b", "100"], capture_output=True, text=True, check=True,
                          env={"HPCVIRT_SOURCE": "disk"})
    beats = [line for line in proc.stdout.splitlines() if line.startswith("hpcvirt-hb ")]
    assert len(beats) >= 5
    for seq, line in enumerate(beats):
        assert re.fullmatch(r"hpcvirt-hb seq=%d up=\d+\.\d\d boot=[0-9a-f]{8} host=\S+ src=disk" % seq, line), line
    assert len(parse(proc.stdout)) == 2


@pytest.mark.parametrize("args, message", [
    (["-t", "0"], "-t (threshold us)"),
    (["-i", "abc"], "-i (interval ms)"),
    (["-c", "99999"], "-c (cpu)"),
    (["extra"], "unexpected argument"),
])
def test_real_probe_refuses_bad_arguments(probe, args, message):
    proc = subprocess.run([probe] + args, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
