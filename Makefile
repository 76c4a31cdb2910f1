# botengine: every target installs what it needs first (`make install` is idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONCURRENCY ?= 32
PROFILE ?= small
PYTEST_ARGS ?=

.PHONY: install test lint start-bot stop-bot pause-bot resume-bot status worker beat flower \
        api up down compose-test demo bench bench-bulk chaos simulator

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

# Compose reads the repository's .env for interpolation only when told (--env-file); its
# own default is docker/.env. The legacy builder needs no registry: BuildKit would fetch
# a frontend, and compose's bake path needs buildx.
COMPOSE_ENV ?= .env
COMPOSE := DOCKER_BUILDKIT=0 COMPOSE_BAKE=false docker compose -f docker/compose.yaml \
	$(if $(wildcard $(COMPOSE_ENV)),--env-file $(COMPOSE_ENV))

up:
	@test -f $(COMPOSE_ENV) || { echo "up: no $(COMPOSE_ENV): cp .env.example $(COMPOSE_ENV)," \
		"then set API_TOKEN, FLOWER_PASSWORD and POSTGRES_PASSWORD in it"; exit 2; }
	$(COMPOSE) up -d --build

down:
	$(COMPOSE) down

# The whole stack in containers (build, sim profile, bots, kill a worker, restart Redis),
# on ports and a project name of its own; needs a running Docker engine (skips without).
compose-test: install
	BOTENGINE_COMPOSE_TEST=1 $(BIN)/python -m pytest tests/test_compose_stack.py -s -rs -p no:cacheprovider

demo: install
	$(BIN)/botengine demo

bench: install
	$(BIN)/python -m benchmarks.run --profile $(PROFILE)

chaos: install
	$(BIN)/python -m benchmarks.chaos --profile $(PROFILE)

# 1,000 bot files validated and started in one command; the fleet API at 10,000 bots.
bench-bulk: install
	$(BIN)/python -m benchmarks.bulk

# The outbox and broker tests on the oldest and newest Celery/kombu pyproject.toml allows.
.PHONY: celery-matrix
celery-matrix:
	bash .ci/celery-matrix
