# The multinode molecule scenario: two namespaced libvirt nodes on this machine, evacuation,
# restore, refusal, preemption and a destination dying mid-migration (docs/migration.md).
# Included by the Makefile (include mk/*.mk); part of `make test`.
.PHONY: molecule-multinode
TEST_SUITES += molecule-multinode

molecule-multinode: setup
	molecule test -s multinode
