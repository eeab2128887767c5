# pymavis: two commands.
#   make run   installs what is missing, then runs the milter with the shipped config
#   make test  installs what is missing (plus Postfix and the test tools), then runs pytest
# Both are idempotent: a second run checks and installs nothing new.

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
STAMPS     := .make
PYTEST_ARGS ?=

# Debian packages: building pymilter needs libmilter-dev, gcc and the Python headers;
# python-magic and libarchive-c load libmagic and libarchive at run time.
RUN_DEBS   := libmilter-dev libmagic1 libarchive13 gcc python3-dev python3-venv
# Tests: a real Postfix in front (its smtp-sink/smtp-source too), miltertest, zip (encrypted
# archives), clamav-testfiles (the clam.* containers the decoder must open), clamd and sigtool
# (clamav-daemon, clamav: a real clamd with a signature database built at test time), spamd
# (spamd, spamassassin: a real spamd with the rules Debian ships), postgresql and
# mariadb-server (a throwaway cluster and server for the SQL quarantine tests).
TEST_DEBS  := postfix miltertest zip clamav-testfiles clamav-daemon clamav spamd spamassassin postgresql mariadb-server opendkim-tools

export DEBIAN_FRONTEND := noninteractive

.PHONY: run test check-config bench clean help

help:
	@echo "make run    - install what is missing and run pymavis in the foreground on inet:127.0.0.1:8899"
	@echo "make test   - install what is missing (Postfix, miltertest, ...) and run the test suite"
	@echo "make bench  - run the benchmark (see bench/README.md)"

run: $(VENV)/.installed
	$(VENV)/bin/pymavis milter -c policies/pymavis.yaml --foreground

check-config: $(VENV)/.installed
	$(VENV)/bin/pymavis check-config -c policies/pymavis.yaml

test: $(VENV)/.installed $(STAMPS)/debs-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed $(STAMPS)/debs-test
	$(VENV)/bin/python bench/run.py

# Install only the Debian packages that are missing; apt-get update only when needed.
define install_debs
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p $(STAMPS) && touch $@
endef

$(STAMPS)/debs-run: Makefile
	$(call install_debs,$(RUN_DEBS))

$(STAMPS)/debs-test: Makefile
	$(call install_debs,$(TEST_DEBS))

$(VENV)/.installed: setup.cfg pyproject.toml $(STAMPS)/debs-run
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) $(STAMPS) build *.egg-info milter/*.egg-info
