"""Unit-test helpers: recorded sysfs/procfs trees materialised under a temporary root."""

import os

import pytest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "sysfs")


def load_recording(name):
    """Files of a recording: ``==> path <==`` headers, each followed by the file's content."""
    files = {}
    current = None
    with open(os.path.join(FIXTURES, name + ".txt")) as handle:
        for line in handle:
            if line.startswith("==> ") and line.rstrip().endswith(" <=="):
                current = line.rstrip()[4:-4]
                files[current] = []
            elif current is not None:
                files[current].append(line)
    return {path: "".join(lines).rstrip("\n") + "\n" for path, lines in files.items()}


def materialise(root, files):
    for path, content in files.items():
        target = os.path.join(str(root), path.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as handle:
            handle.write(content)
    return str(root)


@pytest.fixture
def sysfs_tree(tmp_path):
    """Factory: ``sysfs_tree("server-2s-4numa")`` returns a root path holding that recording."""

    def make(name, extra=None):
        files = load_recording(name)
        files.update(extra or {})
        return materialise(tmp_path / name, files)

    return make
