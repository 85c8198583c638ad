# qingluan: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements.txt requirements-dev.txt pyproject.toml
APT_PACKAGES := openvswitch-switch docker.io iperf3 iptables busybox-static ethtool conntrack \
	iproute2 procps psmisc
# only for the tests: pmacct's sfacctd, the independent sFlow collector of the cross-check
TEST_APT_PACKAGES := pmacct
# only needed to create the venv on a bare Debian/Ubuntu (ensurepip is split out there)
VENV_PACKAGE := python3-venv
PYTEST_ARGS ?=

.PHONY: help venv deps run stop lint test test-unit test-integration flows bench demo clean

help:
	@echo "make run      install what is missing, start OVS, controller, driver (and dockerd)"
	@echo "make stop     stop what 'make run' started"
	@echo "make test     lint, type checks, unit tests, then integration tests (needs root)"
	@echo "make lint     ruff check, ruff format --check, mypy"
	@echo "make flows    regenerate flows/ from real bridges"
	@echo "make bench    run benchmarks/*.py"
	@echo "make demo     three simulated hosts with vlan and vxlan networks (needs root)"
	@echo "make deps     apt-get install the system packages that are missing"
	@echo "make venv     create .venv (again only when a requirements file changed)"
	@echo "make clean    remove .venv, caches and build output"

# apt-get update + install only when something is missing; never interactive
define apt_install_missing
	missing=""; \
	for pkg in $(1); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "install ok installed" \
			|| missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q; \
		apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $$missing; \
	fi
endef

deps:
	@$(call apt_install_missing,$(APT_PACKAGES))
	@scripts/install-suricata
	@echo "system packages: present"

venv: $(STAMP)

$(STAMP): $(REQUIREMENTS)
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
		$(call apt_install_missing,$(VENV_PACKAGE)); \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q -e .
	@touch $@

run: deps venv
	scripts/qingluan-up

stop:
	scripts/qingluan-down

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy qingluan

# unit tests are independent of each other and of the machine: two workers;
# integration tests share the host's network namespace and iptables: one at a time.
# Selected by directory, so that nothing collected is silently left out.
test-unit: venv
	$(VENV)/bin/pytest -q -n 2 tests/unit $(PYTEST_ARGS)

test-integration: deps venv
	@$(call apt_install_missing,$(TEST_APT_PACKAGES))
	$(VENV)/bin/pytest -q tests/integration $(PYTEST_ARGS)

test: deps venv lint
	$(MAKE) --no-print-directory test-unit
	$(MAKE) --no-print-directory test-integration

flows: deps venv
	scripts/regen-flows

bench: deps venv
	@shopt -s nullglob; files=(benchmarks/*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks"; exit 0; fi; \
	for f in "$${files[@]}"; do \
		echo "== $$f"; \
		PYTHONPATH=$(CURDIR) $(PY) "$$f"; \
	done

demo: deps venv
	PYTHONPATH=. $(PY) scripts/rig-demo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
