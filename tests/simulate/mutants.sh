#!/usr/bin/env bash
# Reintroduces each defect in tests/simulate/mutations/ in turn (on a clean work tree),
# runs the simulator until its first violation (at most MUTANT_SEEDS schedules, the kept
# regression seeds left out), undoes it, and prints how many schedules each took.
# MUTANTS="name ..." runs only those.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! git diff --quiet -- src; then
    echo "mutants.sh: src/ has uncommitted changes; commit or stash them first" >&2
    exit 2
fi
seeds=${MUTANT_SEEDS:-2000}
results=()
for patch in tests/simulate/mutations/*.patch; do
    name=$(basename "$patch" .patch)
    if [[ -n ${MUTANTS:-} && " $MUTANTS " != *" $name "* ]]; then
        continue
    fi
    echo "[mutants] $name: applying, building, running up to $seeds schedules"
    git apply "$patch"
    out=$(make --no-print-directory simulate SEEDS="$seeds" FAIL_FAST=1 REGRESSIONS=0 2>&1 || true)
    git apply -R "$patch"
    first=$(grep -o 'first violation in schedule [0-9]* (seed [0-9]*)' <<<"$out" || true)
    what=$(grep -m1 -o 'VIOLATION .*' <<<"$out" | cut -c11-150 || true)
    if [[ -n $first ]]; then
        results+=("$name | found: ${first#first violation in } | $what")
    elif grep -q ' 0 invariant violations' <<<"$out"; then
        results+=("$name | not found in $seeds schedules |")
    else
        results+=("$name | did not run: $(grep -m1 -E 'error(\[|:)' <<<"$out")")
    fi
    echo "[mutants] ${results[-1]}"
done
echo
echo "mutation | first failing schedule (seed) | violation"
printf '%s\n' "${results[@]}"
