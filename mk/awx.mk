# AWX (docs/awx.md): awx.awx for lint and syntax checks of awx/configure.yml, and the collection
# tarball the execution environment definition installs. Included by the Makefile.
#
# awx.awx is not reachable from Galaxy here; PyPI's `ansible` package ships it. Its wheel is
# downloaded (no dependencies, not installed) into .build/dl and only awx.awx is unpacked into
# .build/collections, beside this collection's link, never into the venv.
AWX_ANSIBLE_VERSION ?= 12.3.0
AWX_COLLECTION := $(COLLECTIONS)/ansible_collections/awx/awx
AWX_WHEEL := $(CURDIR)/.build/dl/ansible-$(AWX_ANSIBLE_VERSION)-py3-none-any.whl
EE_TARBALL_DIR := $(CURDIR)/awx/collections

.PHONY: awx-collection awx-ee-tarball awx
awx-collection: $(AWX_COLLECTION)/MANIFEST.json

$(AWX_WHEEL): | venv
	mkdir -p $(dir $@)
	$(VENV)/bin/pip download -q --disable-pip-version-check --no-deps -d $(dir $@) ansible==$(AWX_ANSIBLE_VERSION)

$(AWX_COLLECTION)/MANIFEST.json: $(AWX_WHEEL)
	rm -rf $(AWX_COLLECTION) $(CURDIR)/.build/awx-unpack
	$(VENV)/bin/python -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("ansible_collections/awx/awx/")])' $(AWX_WHEEL) $(CURDIR)/.build/awx-unpack
	mkdir -p $(dir $(AWX_COLLECTION))
	mv $(CURDIR)/.build/awx-unpack/ansible_collections/awx/awx $(AWX_COLLECTION)
	rm -rf $(CURDIR)/.build/awx-unpack
	touch $@

# The tarball awx/execution-environment.yml installs (built from this tree, not committed).
awx-ee-tarball: venv
	mkdir -p $(EE_TARBALL_DIR)
	ansible-galaxy collection build --force --output-path $(EE_TARBALL_DIR) >/dev/null

# lint resolves awx.awx's modules in awx/configure.yml; the tests use it and the tarball.
lint unit integration: awx-collection
integration: awx-ee-tarball

# Only the AWX tests (they are also part of make unit and make integration).
awx: setup awx-collection awx-ee-tarball
	python -m pytest -q tests/unit/test_awx_surveys.py tests/unit/test_guests_inventory.py
	flock /tmp/hpcvirt-node.lock python -m pytest -q tests/integration/test_awx_ee.py tests/integration/test_awx_jobs.py tests/integration/test_guests_inventory.py
