# make test / make demo create (once) and reuse the virtual environment in .venv/.
#   PYTHON=python3.12 make test     builds the venv with another interpreter (3.10, 3.11 or 3.12;
#                                   3.13 needs a prebuilt mmcv wheel)
VENV ?= .venv
# PYTHON, the interpreter that creates the venv, is read from the environment by tools/install/setup_env.sh.
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.mmdualvit-installed
REQS := requirements.txt $(wildcard requirements/*.txt) setup.py $(wildcard tools/install/*)

.PHONY: install test test-quick lint demo gpu-check old-torch-env test-old-torch clean-venv

install: $(STAMP)

# Re-runs only when a requirements file or the installer changed; a second `make` installs nothing.
$(STAMP): $(REQS)
	VENV=$(VENV) bash tools/install/setup_env.sh
	touch $(STAMP)

# Test tiers (markers in pytest.ini): `make test` runs them all (what CI runs); `make test-quick` only the unmarked,
# in-process tier for the inner loop. --durations: the log names the slowest tests, to keep the suite inside CI's time.
# TEST_WORKERS: pytest-xdist processes (2 for CI's 2 cores; 0 runs in this process). --dist loadscope gives each
# module to one worker, so a module's shared fixtures (a trained toy model, a built wheel) are built once.
# (--dist loadgroup would balance better, but xdist 3.8's xdist_group marks do not group under pytest 9.)
QUICK := -m "not slow and not install"
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadscope
test: $(STAMP)
	$(VPY) -m pytest tests $(XDIST) --durations=25

test-quick: $(STAMP)
	$(VPY) -m pytest tests $(QUICK) $(XDIST) --durations=10

# flake8 and isort with the settings of setup.cfg (120 columns); installed into the venv on first use. CI runs it.
# `$(VPY) -m isort .` fixes the import order in place.
LINT_STAMP := $(VENV)/.mmdualvit-lint-installed
$(LINT_STAMP): $(STAMP) requirements/lint.txt
	$(VPY) -m pip install -q -r requirements/lint.txt -c requirements/constraints$$($(VPY) -c \
		'import sys; print("-py310" if sys.version_info < (3, 11) else "")').txt
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(VPY) -m flake8 .
	$(VPY) -m isort --check-only --diff .

demo: $(STAMP)
	$(VPY) tools/demo.py

# Developer checks (dev/): the cuda-marked tests and GPU benchmark rows, printed as tables for README.
gpu-check: $(STAMP)
	$(VPY) dev/gpu_check.py

# A second environment with the oldest torch we declare (torch 2.1.2, torchvision 0.16.2, numpy 1) and mmcv built
# for it, in .venv-torch$(TORCH); `make test-old-torch` runs the quick tier there (CI does, with TORCH=2.1.2).
TORCH ?= 2.1.2
OLD_VENV := .venv-torch$(TORCH)
OLD_STAMP := $(OLD_VENV)/.mmdualvit-installed
old-torch-env: $(OLD_STAMP)

$(OLD_STAMP): $(REQS)
	bash tools/install/old_torch_env.sh $(TORCH)
	touch $(OLD_STAMP)

test-old-torch: $(OLD_STAMP)
	$(OLD_VENV)/bin/python -m pytest tests $(QUICK) $(XDIST) --durations=10

# The OneDL forks of OpenMMLab from PyPI (onedl-mmcv compiled against torch 2.10.0), then the whole test suite there:
#   make fork-env    (venv in .venv-onedl; DRY_RUN=1 only resolves; not part of CI)
.PHONY: fork-env
fork-env:
	bash dev/fork_env.sh

clean-venv:
	rm -rf $(VENV)
