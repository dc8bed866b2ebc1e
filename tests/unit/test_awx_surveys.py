"""The AWX objects of awx/ against what the playbooks accept (playbooks/vars/survey.yml), the
roles' argument specs and the awx.awx modules' own options; and the pure survey checks."""

import os
import re

import pytest
import yaml

from ansible_collections.hpcvirt.regime.plugins.module_utils import _survey
from ansible_collections.hpcvirt.regime.plugins.filter.survey_errors import survey_errors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWX_COLLECTION = os.path.join(ROOT, ".build", "collections", "ansible_collections", "awx", "awx")


def load(*path):
    with open(os.path.join(ROOT, *path)) as handle:
        return yaml.safe_load(handle)


RULES = load("playbooks", "vars", "survey.yml")["hpcvirt_survey_rules"]
TEMPLATES = load("awx", "vars", "job_templates.yml")["hpcvirt_awx_job_templates"]
WORKFLOW = load("awx", "vars", "workflow.yml")["hpcvirt_awx_workflow"]
BY_NAME = {t["name"]: t for t in TEMPLATES}
# Length bounds of the text questions for each rule type that a text answer is checked against.
TEXT_BOUNDS = {"host_pattern": (1, 256), "hosts": (1, 128)}
# Where each rule's choices come from in the roles (the value the role itself accepts).
ROLE_CHOICES = {
    "regime": ("regime", "main", "regime_target"),
    "regime_scheduler": ("regime", "main", "regime_scheduler"),
    "regime_overflow": ("regime", "main", "regime_overflow"),
    "evacuate_strategy": ("evacuate", "main", "evacuate_strategy"),
    "vse_state": ("vse", "main", "vse_state"),
}
# Rule types for variables a role declares as bool or int.
ROLE_TYPES = {
    "evacuate_concurrency": ("evacuate", "main", "int"),
    "evacuate_preempt": ("evacuate", "main", "bool"),
    "vse_force": ("vse", "main", "bool"),
}


def questions(survey):
    return survey["spec"]


def all_surveys():
    for template in TEMPLATES:
        yield template["name"], template["survey_spec"]
    yield WORKFLOW["name"], WORKFLOW["survey_spec"]


def survey_play_vars(playbook):
    """The variables the playbook's answer-check play checks (its first play)."""
    plays = load(playbook)
    first = plays[0]
    assert first["name"] == "Check the answers before anything changes", playbook
    assert first["hosts"] == "all" and first["any_errors_fatal"] is True
    assert first["tasks"][0]["ansible.builtin.include_tasks"] == "tasks/survey.yml"
    return first["vars"]


@pytest.mark.parametrize("name,survey", list(all_surveys()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_question_offers_exactly_what_the_playbook_accepts(name, survey):
    for question in questions(survey):
        variable = question["variable"]
        assert variable in RULES, "%s: %s has no rule in playbooks/vars/survey.yml" % (name, variable)
        rule = RULES[variable]
        kind = question["type"]
        if rule["type"] == "choice":
            assert kind == "multiplechoice"
            assert list(question["choices"]) == list(rule["choices"]), (name, variable)
        elif rule["type"] == "bool":
            assert kind == "multiplechoice"
            assert sorted(question["choices"]) == ["no", "yes"], (name, variable)
        elif rule["type"] in ("int", "batch"):
            assert kind == "integer"
            assert (question["min"], question["max"]) == (rule["min"], rule["max"]), (name, variable)
        else:
            assert kind == "text"
            assert (question["min"], question["max"]) == TEXT_BOUNDS[rule["type"]], (name, variable)
        default = question.get("default", "")
        if default != "":
            assert _survey.check_answer(variable, default, rule) is None, (name, variable, default)
        else:
            assert question["required"] is False, "%s: %s has no default, so it must be optional" % (name, variable)


@pytest.mark.parametrize("variable", sorted(ROLE_CHOICES))
def test_rule_choices_are_the_roles_own(variable):
    role, entry, option = ROLE_CHOICES[variable]
    spec = load("roles", role, "meta", "argument_specs.yml")["argument_specs"][entry]["options"][option]
    assert list(RULES[variable]["choices"]) == list(spec["choices"])


@pytest.mark.parametrize("variable", sorted(ROLE_TYPES))
def test_rule_types_are_the_roles_own(variable):
    role, entry, kind = ROLE_TYPES[variable]
    spec = load("roles", role, "meta", "argument_specs.yml")["argument_specs"][entry]["options"][variable]
    assert spec["type"] == kind
    assert RULES[variable]["type"] == kind


def test_reconfigure_assert_accepts_the_rules_regimes():
    # reconfigure.yml keeps its own assert for command-line use; it must accept the same regimes.
    play = load("playbooks", "reconfigure.yml")[1]
    that = play["pre_tasks"][0]["ansible.builtin.assert"]["that"]
    listed = re.search(r"\[([^\]]+)\]", that).group(1)
    assert [v.strip().strip("'") for v in listed.split(",")] == RULES["regime"]["choices"]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t["name"])
def test_each_survey_playbook_checks_every_question_it_asks(template):
    path = os.path.join(ROOT, template["playbook"])
    assert os.path.isfile(path)
    asked = [q["variable"] for q in questions(template["survey_spec"])]
    assert len(asked) == len(set(asked))
    if template["playbook"] == "playbooks/status.yml":
        # status.yml changes nothing; its answer is only a host pattern (another area's playbook).
        assert asked == ["status_hosts"]
        return
    checked = survey_play_vars(template["playbook"])
    assert set(asked) <= set(checked["hpcvirt_survey_vars"])
    assert set(checked["hpcvirt_survey_vars"]) <= set(RULES)
    hosts_var = checked["hpcvirt_survey_hosts"]["var"]
    assert hosts_var in asked
    plays = load(template["playbook"])
    assert hosts_var in plays[1]["hosts"] and checked["hpcvirt_survey_hosts"]["default"] in plays[1]["hosts"]


def test_templates_that_plan_across_nodes_are_never_sliced():
    for name in ("hpcvirt reconfigure", "hpcvirt evacuate", "hpcvirt restore"):
        assert BY_NAME[name]["job_slice_count"] == 1
        assert BY_NAME[name]["ask_job_slice_count_on_launch"] is False
    sliceable = BY_NAME["hpcvirt reconfigure (sliceable)"]
    assert sliceable["ask_job_slice_count_on_launch"] is True
    assert sliceable["extra_vars"] == {"reconfigure_evacuate": False}
    assert "reconfigure_evacuate" not in [q["variable"] for q in questions(sliceable["survey_spec"])]
    asked = [q["variable"] for q in questions(BY_NAME["hpcvirt reconfigure"]["survey_spec"])]
    assert "reconfigure_evacuate" in asked


def test_every_job_playbook_has_a_template():
    playbooks = sorted(t["playbook"] for t in TEMPLATES)
    assert playbooks == sorted(["playbooks/reconfigure.yml", "playbooks/reconfigure.yml", "playbooks/evacuate.yml",
                                "playbooks/restore.yml", "playbooks/status.yml", "playbooks/provision.yml",
                                "playbooks/characterise.yml"])
    assert all(os.path.exists(os.path.join(ROOT, p)) for p in playbooks)


def test_workflow_runs_status_evacuate_reconfigure_restore_with_failure_paths():
    nodes = {n["identifier"]: n for n in WORKFLOW["nodes"]}
    assert len(nodes) == len(WORKFLOW["nodes"])

    def next_of(identifier, kind):
        return [r["identifier"] for r in nodes[identifier].get("related", {}).get(kind, [])]

    chain, current = [], "status"
    while current:
        chain.append(nodes[current]["unified_job_template"]["name"])
        following = next_of(current, "success_nodes")
        current = following[0] if following else None
    assert chain == ["hpcvirt status", "hpcvirt evacuate", "hpcvirt reconfigure (sliceable)", "hpcvirt restore"]
    assert [nodes[i]["unified_job_template"]["name"] for i in next_of("evacuate", "failure_nodes")] == ["hpcvirt restore"]
    assert [nodes[i]["unified_job_template"]["name"] for i in next_of("reconfigure", "failure_nodes")] == ["hpcvirt status"]
    for identifier, node in nodes.items():
        for kind in ("success_nodes", "failure_nodes", "always_nodes"):
            for target in next_of(identifier, kind):
                assert target in nodes
        template = BY_NAME[node["unified_job_template"]["name"]]
        # AWX accepts a node's extra_data only for variables its template's survey asks.
        asked = {q["variable"] for q in questions(template["survey_spec"])}
        assert set(node.get("extra_data", {})) <= asked, identifier
        for variable, value in node.get("extra_data", {}).items():
            assert _survey.check_answer(variable, value, RULES[variable]) is None


def _module_options(name):
    path = os.path.join(AWX_COLLECTION, "plugins", "modules", name + ".py")
    if not os.path.exists(path):
        pytest.skip("awx.awx not unpacked into .build (make awx-collection)")
    with open(path) as handle:
        source = handle.read()
    doc = re.search(r"DOCUMENTATION = r?'''(.*?)'''", source, re.S) or re.search(r'DOCUMENTATION = r?"""(.*?)"""', source, re.S)
    return yaml.safe_load(doc.group(1))["options"]


def test_templates_use_only_awx_job_template_options():
    options = _module_options("job_template")
    for template in TEMPLATES:
        assert set(template) <= set(options), set(template) - set(options)


def test_workflow_uses_only_awx_workflow_options():
    options = _module_options("workflow_job_template")
    node_options = options["workflow_nodes"]["suboptions"]
    for node in WORKFLOW["nodes"]:
        assert set(node) <= set(node_options), set(node) - set(node_options)
    assert set(WORKFLOW) - {"nodes"} <= set(options)


def test_configure_playbook_sets_every_template_option_it_is_given():
    play = load("awx", "configure.yml")[0]
    task = next(t for t in play["tasks"] if "awx.awx.job_template" in t)
    passed = set(task["awx.awx.job_template"])
    for template in TEMPLATES:
        assert set(template) <= passed


# The pure checks.
PATTERN_HINT = " (1 to 256 of letters, digits and _ . * - [ ] : , & !)"


@pytest.mark.parametrize("answers,expected", [
    ({"regime": "space_shared"}, []),
    ({"regime": "bogus"}, ["regime: 'bogus' is not one of space_shared, time_shared, mixed"]),
    ({"regime": ["space_shared"]}, ["regime: ['space_shared'] is not one of space_shared, time_shared, mixed"]),
    ({"reconfigure_serial": 0}, []),
    ({"reconfigure_serial": "25%"}, []),
    ({"reconfigure_serial": [1, "50%"]}, []),
    ({"reconfigure_serial": "0%"}, ["reconfigure_serial: '0%' must be a number of hosts or a percentage from 1% to 100%"]),
    ({"reconfigure_serial": 10001}, ["reconfigure_serial: 10001 must be between 0 and 10000 hosts (0 means all at once)"]),
    ({"reconfigure_max_fail_percentage": "100"}, []),
    ({"reconfigure_max_fail_percentage": 101}, ["reconfigure_max_fail_percentage: 101 is not a whole number from 0 to 100"]),
    ({"reconfigure_max_fail_percentage": True}, ["reconfigure_max_fail_percentage: True is not a whole number from 0 to 100"]),
    ({"reconfigure_evacuate": "yes"}, []),
    ({"reconfigure_evacuate": False}, []),
    ({"reconfigure_evacuate": "maybe"}, ["reconfigure_evacuate: 'maybe' is not yes or no"]),
    ({"reconfigure_hosts": "rack_a:&space_shared:!cn-a01"}, []),
    ({"reconfigure_hosts": "all; rm -rf /"}, ["reconfigure_hosts: 'all; rm -rf /' is not a host pattern" + PATTERN_HINT]),
    ({"reconfigure_hosts": "~cn.*"}, ["reconfigure_hosts: '~cn.*' is not a host pattern" + PATTERN_HINT]),
    ({"evacuate_destinations": ["cn-b01", "cn-b02"]}, []),
    ({"evacuate_destinations": "time shared"}, ["evacuate_destinations: 'time shared' is not a group or host name"]),
    ({"evacuate_concurrency": 0}, ["evacuate_concurrency: 0 is not a whole number from 1 to 64"]),
    ({"regime": _survey.UNSET}, []),
])
def test_answer_errors(answers, expected):
    assert _survey.answer_errors(answers, RULES) == expected


def test_required_and_unknown():
    assert _survey.answer_errors({}, RULES, ["regime"]) == ["regime: an answer is required"]
    assert _survey.answer_errors({"regime": _survey.UNSET}, RULES, ["regime"]) == ["regime: an answer is required"]
    with pytest.raises(_survey.RuleError, match="nosuch: no rule"):
        _survey.answer_errors({"nosuch": 1}, RULES)
    with pytest.raises(_survey.RuleError, match="unknown rule type"):
        _survey.check_answer("x", 1, {"type": "float"})


def test_filter_reports_every_bad_answer_and_refuses_bad_arguments():
    from ansible.errors import AnsibleFilterError

    errors = survey_errors({"regime": "x", "vse_state": "gone", "vse_force": "no"}, RULES, required=["regime"])
    assert errors == ["regime: 'x' is not one of space_shared, time_shared, mixed",
                      "vse_state: 'gone' is not one of present, running, stopped, absent"]
    with pytest.raises(AnsibleFilterError, match="dictionaries"):
        survey_errors(["regime"], RULES)
    with pytest.raises(AnsibleFilterError, match="no rule"):
        survey_errors({"other": 1}, RULES)


def test_long_values_are_shortened_in_messages():
    message = _survey.check_answer("regime", "x" * 500, RULES["regime"])
    assert len(message) < 200 and message.startswith("regime: 'xxx")
