# The isolation benchmark's smoke size: noise on a partition CPU under host load, before and after
# housekeeping confinement (benchmarks/isolation.py, docs/isolation.md). Figures are printed, never
# asserted. Part of `make test`.
.PHONY: isolation-smoke
TEST_SUITES += isolation-smoke

isolation-smoke: setup
	python benchmarks/isolation.py --smoke
