# The slurm molecule scenario: a real Slurm test bed whose node1 is this machine; operator-driven
# and Slurm-driven regime changes, a failure mid-way (docs/slurm.md). Part of `make test`.
.PHONY: molecule-slurm
TEST_SUITES += molecule-slurm

molecule-slurm: setup
	molecule test -s slurm
