# Usher developer targets (the whole suite runs through ./test.sh)
PYTEST ?= .venv/bin/pytest
SOAK_SECONDS ?= 3600
SOAK_KILLS ?= 100

.PHONY: soak faults fuzz bench bench-deps bench-scale bench-scheduler bench-realvm bench-api bench-report

PYTHON ?= .venv/bin/python
BENCH_OUT ?= bench/results
BENCH_PG_DB ?= usher_bench
BENCH_PG_URL ?= postgresql://usher:usher@127.0.0.1:5432/$(BENCH_PG_DB)
# PostgreSQL as test.sh sets it up (role usher); the benchmark's database made anew
BENCH_PG_FRESH = runuser -u postgres -- dropdb --if-exists $(BENCH_PG_DB) && runuser -u postgres -- createdb -O usher $(BENCH_PG_DB)

# the soak test for longer than CI runs it (CI: 10 kills or 60 s per database): 100 kills
# of the controller and LNMs on SQLite, then on PostgreSQL (USHER_TEST_PG_URL, as test.sh sets)
soak:
	USHER_SOAK_SECONDS=$(SOAK_SECONDS) USHER_SOAK_KILLS=$(SOAK_KILLS) $(PYTEST) -q -s -p no:cacheprovider tests/faults/test_soak.py

faults:
	$(PYTEST) -q -s tests/faults

fuzz:
	$(PYTEST) -q -s tests/test_fuzz_api.py tests/test_state_machine.py

# the benchmarks (docs/performance.md); not part of CI. Each writes bench/results/NAME.json,
# then bench-report rewrites the tables of docs/performance.md from them.
bench: bench-deps bench-scheduler bench-scale bench-api bench-realvm bench-report

bench-deps:
	$(PYTHON) -m pip install -q -e '.[bench]'

bench-scale:
	$(PYTHON) bench/scale.py --nodes 100 --vms 10000 --out $(BENCH_OUT)
	$(PYTHON) bench/scale.py --nodes 1000 --vms 10000 --out $(BENCH_OUT)
	# the same starts on PostgreSQL (a fresh database each run: BENCH_PG_URL, BENCH_PG_DB)
	$(BENCH_PG_FRESH)
	$(PYTHON) bench/scale.py --nodes 1000 --vms 10000 --db-url $(BENCH_PG_URL) --name scale-1000-postgresql --out $(BENCH_OUT)
	# the same run again with py-spy sampling the controller (it slows it): the profile only
	$(PYTHON) bench/scale.py --nodes 1000 --vms 10000 --out /tmp/usher-bench-profiled --profile /tmp/usher-bench-scale-1000.txt
	# 10,000 LNM links: the joins alone take about five minutes here
	-$(PYTHON) bench/scale.py --nodes 10000 --vms 10000 --swarms 4 --out $(BENCH_OUT)
	# reconnect storms (issue 18 item 4): over TLS, the controller killed and restarted with
	# every node dialling back; result reconnect-<nodes>
	$(PYTHON) bench/scale.py --reconnect --nodes 1000 --vms 2000 --out $(BENCH_OUT)
	-$(PYTHON) bench/scale.py --reconnect --nodes 10000 --vms 10000 --swarms 4 --out $(BENCH_OUT)

bench-scheduler:
	$(PYTHON) bench/scheduler.py --out $(BENCH_OUT)

bench-api:
	# each client asking as soon as it is answered (the capacity), then paced at 1,000 a second
	$(PYTHON) bench/api_load.py --clients 200 --vms 10000 --seconds 60 --out $(BENCH_OUT)
	$(PYTHON) bench/api_load.py --clients 200 --vms 10000 --seconds 60 --rate 1000 --name api-load-paced --per-kind-seconds 0 --out $(BENCH_OUT)

bench-realvm:
	$(PYTHON) bench/realvm.py --rounds 8 --out $(BENCH_OUT)

bench-report:
	$(PYTHON) bench/report.py --results $(BENCH_OUT)
