"""Great Expectations suites and the round gate (see the data-engine issue)."""
