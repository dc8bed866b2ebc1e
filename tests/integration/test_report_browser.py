"""The core map in a real headless browser (Debian's chromium): playbooks/report.yml on this node with
real guests, the page as the browser parsed it (--dump-dom) holds every CPU and every guest; a page
with hostile names stays inert; a screenshot is kept in tests/output/."""

import html.parser
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid

import pytest

from conftest import ROOT, run_playbook

sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))
from core_map_fixtures import big_node, guest, small_node  # noqa: E402  (shared with the unit tests)

from ansible_collections.hpcvirt.regime.plugins.filter.core_map import core_map, core_map_html  # noqa: E402

OUTPUT = os.path.join(ROOT, "tests", "output")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WINDOW = (1400, 1000)


def browser(url, *what):
    """Run chromium headless on ``url`` with a fresh profile; no network, no background services."""
    with tempfile.TemporaryDirectory(prefix="hpcvirt-chromium-") as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir=" + profile,
               "--window-size=%d,%d" % WINDOW] + list(what) + [url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Dom(html.parser.HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.elements = []
        self.title = []
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title.append(data)

    def having(self, tag, cls=None):
        return [a for t, a in self.elements if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def png_size(path):
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def chromium():
    assert os.access(CHROMIUM, os.X_OK), "chromium is not installed (scripts/setup-host.sh installs it)"
    return CHROMIUM


def test_report_page_shows_every_cpu_and_guest(chromium, conn, guest_factory):
    names = ["hpcvirt-it-map-%s" % uuid.uuid4().hex[:4] for dummy in range(2)]
    for name in names:
        guest_factory(name, wait=False)
    report_dir = os.path.join(OUTPUT, "report")
    run = run_playbook("playbooks/report.yml", "-e", "report_dir=%s" % report_dir,
                       extra_vars={"report_heartbeats": {names[0]: {"max_gap_ms": 123.4}}})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    page = re.search(r"The core map is in (\S+\.html)\s+\(data:\s+(\S+\.json)\)", run.stdout)
    assert page, run.stdout[-2000:]
    with open(page.group(2)) as handle:
        data = json.load(handle)
    node = data["nodes"][0]
    online = len(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    assert node["cpu_count"] == online
    domains = sorted(dom.name() for dom in conn.listAllDomains())
    assert sorted(g["name"] for g in node["guests"]) == domains
    assert {g["name"]: g["max_gap_ms"] for g in node["guests"]}[names[0]] == 123.4

    dom = Dom(browser("file://" + page.group(1), "--dump-dom"))
    cpus = dom.having("div", "cpu")
    assert len(cpus) == online
    assert sorted(int(c["data-cpu"]) for c in cpus) == list(range(online))
    sections = dom.having("section", "node")
    assert [(s["data-host"], int(s["data-cpus"]), int(s["data-guests"])) for s in sections] == [
        ("localhost", online, len(domains))]
    shown = {a["data-guest"] for a in dom.having("span", "guest")}
    assert set(names) <= shown
    assert shown == set(domains)
    # The page fetched nothing and runs nothing.
    assert not dom.having("script") and not dom.having("link") and not dom.having("img")

    shot = os.path.join(OUTPUT, "core-map-node.png")
    browser("file://" + page.group(1), "--screenshot=" + shot)
    assert png_size(shot) == WINDOW


def test_group_page_with_hostile_names_stays_inert_in_the_browser(chromium):
    hostile = '<img src=x onerror="document.title=1"><script>document.title="pwned"</script>'
    nodes = {"rack1-n01": big_node(),
             "rack1-n02": big_node(hostname=hostile, guests=[guest(hostile, ["1", "2"], "dedicated", "p1"),
                                                             guest(hostile + "-web", ["3,7,11,15"], "shared")]),
             "rack2-n01": small_node([guest("svc-1", ["0-1"], "shared")], hostname="rack2-n01")}
    model = core_map(nodes, {"rack1-n01": {"transition": {"regime": "mixed", "changed": True, "plan": [{}] * 9,
                                                          "timings": {"read": 21.0, "plan": 3.2, "drop": 48.9},
                                                          "guests": [{"name": "mpi-0", "fate": "placed",
                                                                      "live_ms": 11.0}]},
                                           "heartbeats": {"mpi-0": {"max_gap_ms": 64.0}}}})
    os.makedirs(OUTPUT, exist_ok=True)
    path = os.path.join(OUTPUT, "core-map-group.html")
    with open(path, "w") as handle:
        handle.write(core_map_html(model, title="rack 1 and 2 " + hostile))
    dom = Dom(browser("file://" + path, "--dump-dom"))
    assert not dom.having("script") and not dom.having("img")
    assert not [a for dummy, a in dom.elements if any(k.startswith("on") for k in a)]
    assert "".join(dom.title) == "rack 1 and 2 " + hostile      # shown as text, never run
    assert len(dom.having("div", "cpu")) == 16 + 16 + 2
    assert [int(s["data-guests"]) for s in dom.having("section", "node")] == [3, 2, 1]
    spans = [a["data-guest"] for a in dom.having("span", "guest")]
    assert spans.count(hostile) == 2                              # on its two pinned CPUs
    shot = os.path.join(OUTPUT, "core-map-group.png")
    browser("file://" + path, "--screenshot=" + shot)
    assert png_size(shot) == WINDOW
