# Usher developer targets (the whole suite runs through ./test.sh)
PYTEST ?= .venv/bin/pytest
SOAK_SECONDS ?= 600

.PHONY: soak faults fuzz

# the soak test for longer than CI runs it (USHER_SOAK_SECONDS=60 there)
soak:
	USHER_SOAK_SECONDS=$(SOAK_SECONDS) $(PYTEST) -q -s -p no:cacheprovider tests/faults/test_soak.py

faults:
	$(PYTEST) -q -s tests/faults

fuzz:
	$(PYTEST) -q -s tests/test_fuzz_api.py tests/test_state_machine.py
