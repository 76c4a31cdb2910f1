# botengine: every target installs what it needs first (`make install` is idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONCURRENCY ?= 32
PROFILE ?= small
PYTEST_ARGS ?=

.PHONY: install test lint start-bot stop-bot pause-bot resume-bot status worker beat flower \
        api up down demo bench chaos simulator

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,embedded,flower]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy engine strategies

start-bot: install
	@test -n "$(BOT)" || { echo "usage: make start-bot BOT=bots/x.yaml"; exit 2; }
	$(BIN)/botengine start-bot $(BOT)

stop-bot: install
	@test -n "$(BOT)" || { echo "usage: make stop-bot BOT=name-or-file"; exit 2; }
	$(BIN)/botengine stop-bot $(BOT)

pause-bot: install
	$(BIN)/botengine pause-bot $(BOT)

resume-bot: install
	$(BIN)/botengine resume-bot $(BOT)

status: install
	$(BIN)/botengine status

worker: install
	$(BIN)/celery -A engine.celery_app worker -l info -Q ticks,maintenance \
		--pool threads --concurrency $(CONCURRENCY)

beat: install
	$(BIN)/celery -A engine.celery_app beat -l info --schedule $(VENV)/celerybeat-schedule

flower: install
	$(BIN)/botengine flower

api: install
	$(BIN)/botengine api

simulator: install
	$(BIN)/botengine simulator

up:
	docker compose -f docker/compose.yaml up -d --build

down:
	docker compose -f docker/compose.yaml down

demo: install
	$(BIN)/botengine demo

bench: install
	$(BIN)/python -m benchmarks.run --profile $(PROFILE)

chaos: install
	$(BIN)/python -m benchmarks.chaos --profile $(PROFILE)

# The outbox and broker tests on the oldest and newest Celery/kombu pyproject.toml allows.
.PHONY: celery-matrix
celery-matrix:
	bash .ci/celery-matrix
