#!/usr/bin/env bash
# ansible-test sanity needs the collection at ansible_collections/<namespace>/<name>: copy the
# tracked (and new, unignored) files there and run it with this venv's Python.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# Outside the repository: inside it, ansible-test would ask this git tree for the file list and
# find the copy ignored.
work=$(mktemp -d /tmp/hpcvirt-sanity.XXXXXX)
trap 'rm -rf "$work"' EXIT
dest=$work/ansible_collections/hpcvirt/regime
mkdir -p "$dest"
cd "$top"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [[ -e $f ]] && install -D -m "$(stat -c %a "$f")" "$f" "$dest/$f"
done
# ansible-test makes one venv per sanity test and bootstraps pip in it with a get-pip script it
# downloads from a host outside the package registries. Seed its cache with an equivalent: the
# same pip release, from PyPI, installed from its wheel.
cache=$HOME/.ansible/test/cache
pip_version=$(python - <<'PY'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
import sys
print(get_venv_packages(NativePythonConfig(version="%d.%d" % sys.version_info[:2]))["pip"])
PY
)
getpip=$cache/get_pip_${pip_version//./_}.py
if [[ ! -f $getpip ]]; then
  mkdir -p "$cache"
  python -m pip download -q --disable-pip-version-check --no-deps -d "$cache" "pip==$pip_version"
  cat > "$getpip" <<PY
import glob, os, sys
sys.path.insert(0, glob.glob(os.path.join("$cache", "pip-$pip_version-*.whl"))[0])
from pip._internal.cli.main import main
# get-pip's own flags: setuptools and wheel are left out unless asked for.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall"] + args))
PY
fi

cd "$dest"
python_version=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ansible-test sanity --color no --python "$python_version" --requirements "$@"
