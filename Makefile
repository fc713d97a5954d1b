# make test / make demo create (once) and reuse the virtual environment in .venv/.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.mmdualvit-installed
REQS := requirements.txt $(wildcard requirements/*.txt) setup.py tools/install/setup_env.sh

.PHONY: install test demo clean-venv

install: $(STAMP)

# Re-runs only when a requirements file or the installer changed; a second `make` installs nothing.
$(STAMP): $(REQS)
	VENV=$(VENV) bash tools/install/setup_env.sh
	touch $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest tests

demo: $(STAMP)
	$(PYTHON) tools/demo.py

clean-venv:
	rm -rf $(VENV)
