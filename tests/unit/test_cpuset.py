import re
import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    CpuListError,
    cpumap_to_set,
    format_cpulist,
    format_cpumask,
    parse_cpulist,
    parse_cpumask,
    set_to_cpumap,
)


@pytest.mark.parametrize("text, cpus", [
    ("", set()),
    ("\n", set()),
    ("0", {0}),
    ("0-3", {0, 1, 2, 3}),
    ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
    ("0-3,2-5", {0, 1, 2, 3, 4, 5}),
    (" 1 , 3 ", {1, 3}),
    ("0-15:2/4", {0, 1, 4, 5, 8, 9, 12, 13}),
    ("0-7:1/2", {0, 2, 4, 6}),
])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == frozenset(cpus)


def test_parse_accepts_ints_and_lists():
    assert parse_cpulist(5) == {5}
    assert parse_cpulist(["0-1", 4, "6"]) == {0, 1, 4, 6}
    assert parse_cpulist(None) == frozenset()


@pytest.mark.parametrize("bad", ["a", "3-1", "1-", "-1", "0-7:3/2", "0-7:0/2", "1,,x"])
def test_parse_rejects_what_the_kernel_rejects(bad):
    with pytest.raises(CpuListError):
        parse_cpulist(bad)


def test_negative_int_rejected():
    with pytest.raises(CpuListError):
        parse_cpulist(-1)


@pytest.mark.parametrize("cpus, text", [
    (set(), ""),
    ({0}, "0"),
    ({0, 1}, "0,1"),
    ({0, 1, 2}, "0-2"),
    ({0, 1, 2, 3, 8, 10, 11}, "0-3,8,10,11"),
    ({5, 3, 4, 100}, "3-5,100"),
])
def test_format_cpulist(cpus, text):
    assert format_cpulist(cpus) == text


def test_round_trip_large():
    cpus = frozenset(range(0, 128, 3)) | frozenset(range(64, 80))
    assert parse_cpulist(format_cpulist(cpus)) == cpus


@pytest.mark.parametrize("mask, cpus", [
    ("3", {0, 1}),
    ("00000000,00000001", {0}),
    ("80000000,00000000", {63}),
    ("ff", set(range(8))),
    ("0", set()),
])
def test_parse_cpumask(mask, cpus):
    assert parse_cpumask(mask) == frozenset(cpus)


def test_parse_cpumask_rejects_garbage():
    with pytest.raises(CpuListError):
        parse_cpumask("zz")


def test_format_cpumask_groups_of_32_bits():
    assert format_cpumask({0, 1}, 2) == "00000003"
    assert format_cpumask({0, 63}, 64) == "80000000,00000001"
    assert format_cpumask(set(), 128) == "00000000,00000000,00000000,00000000"
    assert parse_cpumask(format_cpumask({5, 70, 127}, 128)) == {5, 70, 127}


def test_libvirt_cpumaps():
    assert cpumap_to_set((True, False, True)) == {0, 2}
    assert set_to_cpumap({0, 2}, 4) == (True, False, True, False)


@pytest.mark.parametrize("text, limit, words", [
    ("0-4000000000", 8192, "names CPU 4000000000, beyond the last CPU this node can have (8191)"),
    ("3", 2, "names CPU 3, beyond the last CPU this node can have (1)"),
    ("1-" + "9" * 80, 8192, "is not a cpu-list element"),
    ("0," * 9000, 8192, "longer than any node needs"),
])
def test_cpulists_are_bounded_before_they_are_expanded(text, limit, words):
    with pytest.raises(CpuListError, match=re.escape(words)):
        parse_cpulist(text, limit=limit)


def test_a_cpulist_element_must_match_whole():
    with pytest.raises(CpuListError):
        parse_cpulist("1\n2x")
    assert parse_cpulist("0-3\n") == frozenset({0, 1, 2, 3})    # sysfs files end in a newline
