# Smoke sizes of every benchmark, so none can rot: each benchmarks/*.py runs with --smoke (under a
# minute each), prints its table and JSON line, and asserts nothing on time. Part of `make test`.
# Full sizes are run by hand on a quiet node (README, Developing).
.PHONY: benchmarks-smoke
TEST_SUITES += benchmarks-smoke

benchmarks-smoke: setup
	set -e; for bench in benchmarks/*.py; do \
	  echo "== $$bench --smoke"; python "$$bench" --smoke; \
	done
