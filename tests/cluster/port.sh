# shellcheck shell=bash
# Sourced by tests/cluster/up.sh and tests/cluster/smoke.sh: whether a TCP port of
# 127.0.0.1 is taken, and a bounded wait for it to be freed (the API server of a cluster
# just deleted may take a few seconds to exit: `make bench` right after `make cluster`).

# port_taken PORT: something accepts connections on 127.0.0.1:PORT.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port_free PORT SECONDS: polls every 0.5 s until the port is free; fails when it is
# still taken after SECONDS.
wait_port_free() {
  local port=$1 deadline=$((SECONDS + $2))
  while port_taken "$port"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
