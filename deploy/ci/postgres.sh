#!/usr/bin/env bash
# Sourced by deploy/test.sh: starts a throwaway PostgreSQL for the storage tests and
# exports LINEWATCH_TEST_POSTGRES_URL.  (Filled in by the storage work.)
true
