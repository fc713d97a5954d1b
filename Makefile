# make test / make demo create (once) and reuse the virtual environment in .venv/.
#   PYTHON=python3.12 make test     builds the venv with another interpreter (3.10, 3.11 or 3.12;
#                                   3.13 needs a prebuilt mmcv wheel)
VENV ?= .venv
# PYTHON, the interpreter that creates the venv, is read from the environment by tools/install/setup_env.sh.
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.mmdualvit-installed
REQS := requirements.txt $(wildcard requirements/*.txt) setup.py $(wildcard tools/install/*)

.PHONY: install test demo gpu-check old-torch-env clean-venv

install: $(STAMP)

# Re-runs only when a requirements file or the installer changed; a second `make` installs nothing.
$(STAMP): $(REQS)
	VENV=$(VENV) bash tools/install/setup_env.sh
	touch $(STAMP)

# --durations: the log names the slowest tests, to keep the suite inside CI's time.
test: $(STAMP)
	$(VPY) -m pytest tests --durations=25

demo: $(STAMP)
	$(VPY) tools/demo.py

# Developer checks (dev/): the cuda-marked tests and GPU benchmark rows, printed as tables for README.
gpu-check: $(STAMP)
	$(VPY) dev/gpu_check.py

# A second environment with an older torch and mmcv compiled against it, then the whole test suite there:
#   make old-torch-env TORCH=2.1.2    (venv in .venv-torch2.1.2; not part of CI)
TORCH ?= 2.1.2
old-torch-env:
	bash dev/old_torch_env.sh $(TORCH)

# The OneDL forks of OpenMMLab from PyPI (onedl-mmcv compiled against torch 2.10.0), then the whole test suite there:
#   make fork-env    (venv in .venv-onedl; DRY_RUN=1 only resolves; not part of CI)
.PHONY: fork-env
fork-env:
	bash dev/fork_env.sh

clean-venv:
	rm -rf $(VENV)
