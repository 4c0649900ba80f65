# shellcheck shell=bash
# Sourced by tests/cluster/smoke.sh, tests/chart/test.sh and tests/incluster/test.sh: named
# checks with their time, the "N passed, M failed" summary, and poll. CHECK_WIDTH: the width
# of the name column.

passed=0
failures=()
why=
note=

now_ms() { date +%s%3N; }
since() { local ms=$(($(now_ms) - $1)); printf '%d.%02d s' $((ms / 1000)) $((ms % 1000 / 10)); }

# check NAME FUNCTION [ARGS...]: run one check, print its result and time. A failing check
# sets $why to say what it saw; a passing one may set $note.
check() {
  local name=$1 t0 width=${CHECK_WIDTH:-62}
  shift
  why='' note=''
  t0=$(now_ms)
  if "$@"; then
    passed=$((passed + 1))
    printf 'ok    %-*s %s%s\n' "$width" "$name" "$(since "$t0")" "${note:+  ($note)}"
  else
    failures+=("$name: ${why:-failed}")
    printf 'FAIL  %-*s %s\n      %s\n' "$width" "$name" "$(since "$t0")" "${why:-failed}"
  fi
}

# summary: the counts, and the failures; exits non-zero when anything failed.
summary() {
  echo "${passed} passed, ${#failures[@]} failed"
  if [ "${#failures[@]}" -gt 0 ]; then
    printf '  failed: %s\n' "${failures[@]}"
    exit 1
  fi
}

# absent ARGS...: `k get ARGS -o name` finds nothing (NotFound, or an empty list). Any other
# error is false: an API server that does not answer proves nothing gone. The caller
# defines k (kubectl).
absent() {
  local out
  if out=$(k get "$@" -o name 2>&1); then
    [ -z "$out" ]
  else
    [[ $out == *"(NotFound)"* ]]
  fi
}

# poll [SECONDS] COMMAND...: retry COMMAND until it succeeds or SECONDS (default: $timeout,
# else 60) have passed.
poll() {
  local secs=${timeout:-60}
  case $1 in [0-9]*) secs=$1 && shift ;; esac
  local end=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.25
  done
}
