# The production scenario: a systemd + cgroup v2 Debian 12 node as a QEMU VM (tools/prodnode),
# reached over SSH, through a regime round trip (docs/production-node.md). Part of `make test`.
# The VM runs its own QEMU: no node lock needed for it.
.PHONY: molecule-production prodnode-image
TEST_SUITES += molecule-production

prodnode-image: image
	tools/prodnode/prodnode.sh build

molecule-production: setup prodnode-image
	molecule test -s production
