# The few commands people type. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lint clean chromium postgresql nodejs nginx

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) chromium postgresql nodejs nginx
	$(BIN)/python -m pytest -q

# The dashboard's browser tests drive Debian's Chromium (browser downloads are not possible).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium'"; fi; }

demo: $(STAMP)
	$(BIN)/python -m app.demo

bench: $(STAMP) postgresql
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check app tests bench deploy gunicorn.conf.py
	$(BIN)/ruff format --check app tests bench deploy gunicorn.conf.py

clean:
	rm -rf $(VENV) instance .pytest_cache

# PostgreSQL tests start a throwaway server from Debian's binaries (tests/pg.py).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql; \
	  else echo "PostgreSQL is missing: run 'sudo apt-get install postgresql'"; fi; }

# The contract tests run node-bandwidth (installed from npm by the tests) on Node.js.
nodejs:
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nodejs npm; \
	  else echo "Node.js is missing: run 'sudo apt-get install nodejs npm'"; fi; }

# The deployment tests run deploy/nginx.conf with Debian's nginx (tests/deploy/).
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nginx; \
	  else echo "nginx is missing: run 'sudo apt-get install nginx'"; fi; }
