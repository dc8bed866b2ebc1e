# hpcvirt.regime — the two commands of README.md, and the steps they are made of.
#   make demo   set up this machine and run the main job on the embedded default inventory
#   make test   set up this machine and run every test suite
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PYTHON ?= python3
IMAGE_DIR ?= /var/lib/hpcvirt/images
COLLECTIONS := $(CURDIR)/.build/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/hpcvirt/regime
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export HPCVIRT_IMAGE_DIR := $(IMAGE_DIR)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: demo demo-clean test setup host venv noise image libvirt collection unit sanity lint integration molecule clean

# Extra suites (molecule scenarios, smoke benchmarks, ...) live in mk/*.mk: each defines its target
# and appends it to TEST_SUITES, which `make test` runs after the core suites, in file-name order.
TEST_SUITES :=
include $(wildcard mk/*.mk)

demo: setup
	python tools/demo.py

test: setup demo-clean unit lint sanity integration molecule $(TEST_SUITES)

# The tests carve this node and drop guests onto it: the demo's guests (left running by make demo)
# would hold the CPUs they need, so they go first (make demo makes them again).
demo-clean: setup
	ansible-playbook playbooks/provision.yml -e vse_state=absent -e vse_force=true

setup: host venv collection noise image libvirt

host:
	scripts/setup-host.sh

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

collection:
	mkdir -p $(dir $(COLLECTION_LINK))
	ln -sfn $(CURDIR) $(COLLECTION_LINK)

# The noise probe (tools/noise), static, for the host: hpcvirt.regime.characterise runs it from
# $(NOISE_BIN) (the guest image builds its own copy into the initramfs and the master disk).
NOISE_BIN ?= /usr/local/libexec/hpcvirt-noise
noise: .build/noise/hpcvirt-noise
	install -D -m 0755 .build/noise/hpcvirt-noise $(NOISE_BIN)

.build/noise/hpcvirt-noise: tools/noise/hpcvirt-noise.c | host
	mkdir -p $(dir $@)
	gcc -static -s -O2 -Wall -Wextra -o $@ $<

image:
	tools/guest/build-image.sh $(IMAGE_DIR)

libvirt:
	scripts/start-libvirt.sh

unit: venv collection
	python -m pytest -q tests/unit

lint: venv collection
	ansible-lint --profile production
	antsibull-changelog lint

sanity: venv
	scripts/sanity.sh

integration: setup
	python -m pytest -q tests/integration

molecule: setup
	molecule test -s default

clean:
	rm -rf .build .pytest_cache
