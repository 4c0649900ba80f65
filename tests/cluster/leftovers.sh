#!/usr/bin/env bash
# Usage: tests/cluster/leftovers.sh snapshot [FILE]   record the machine's state
#        tests/cluster/leftovers.sh compare [FILE]    compare the machine with the record
#
# Proves that `make cluster-down` leaves the machine as `make cluster` found it: take a
# snapshot before `make cluster`, compare after `make cluster-down`. Recorded: processes
# of the cluster (by name; not zombies), mounts, network interfaces, routes, network namespaces,
# iptables and nftables rules, cgroup directories, all sysctls but the ever-changing
# counters, listening sockets, and the host directories a kubelet or containerd would use
# by default. `compare` prints every difference and exits 1 if there is any.
# FILE defaults to ${TMPDIR:-/tmp}/crane-leftovers.snapshot. Needs root (iptables, nft).
# LEFTOVERS_IGNORE: a regular expression; processes, and listening sockets of processes,
# whose command line matches it are left out (another checkout's cluster on the same
# machine, e.g. LEFTOVERS_IGNORE=/work/main/).
set -euo pipefail

file=${2:-${TMPDIR:-/tmp}/crane-leftovers.snapshot}

# The sysctls that count or randomise by themselves, never set by anyone.
volatile='^(fs\.dentry-state|fs\.file-nr|fs\.inode-nr|fs\.inode-state|fs\.quota\.[a-z_]*|kernel\.ns_last_pid|kernel\.random\.(uuid|entropy_avail)|net\.netfilter\.nf_conntrack_count|kernel\.pty\.nr) '
# Process names the cluster runs (its control plane, the node, the pods' pause).
names='^(etcd|kube-apiserver|kube-controller.*|kube-scheduler|kwok|kwok-controller|kubelet|kube-proxy|containerd|containerd-shim.*|runc|pause|socat|crane-.*)$'
# Where a kubelet, containerd or the CNI plugins write when not told otherwise.
dirs=(/var/lib/kubelet /var/log/pods /var/log/containers /etc/kubernetes /etc/cni /opt/cni
  /var/lib/cni /run/containerd /var/lib/containerd /opt/containerd /run/netns /var/run/netns)

section() { printf '### %s\n' "$1"; }
ignore=${LEFTOVERS_IGNORE:-}
# ignored PID: does the process's command line match LEFTOVERS_IGNORE?
ignored() {
  [ -n "$ignore" ] || return 1
  grep -Eq -- "$ignore" <<<"$({ tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null)"
}

state() {
  section processes
  local f pid comm
  for f in /proc/[0-9]*/comm; do
    pid=${f#/proc/}
    pid=${pid%/comm}
    comm=$(cat "$f" 2>/dev/null) || continue
    [[ $comm =~ $names ]] || continue
    # A zombie has exited: it only waits for PID 1 to reap it (a second or two here).
    [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] || continue
    ! ignored "$pid" || continue
    printf '%s %s\n' "$comm" "$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-160)"
  done | sort
  section mounts
  cut -d' ' -f1-4 /proc/mounts | sort
  section interfaces
  ip -o link show | sed 's/^[0-9]*: //; s/:.*//' | sort
  section addresses
  ip -o addr show | awk '{print $2, $3, $4}' | sort
  section routes
  { ip route show table all; ip -6 route show table all; } | sort
  section 'network namespaces'
  ip netns list 2>/dev/null | sort
  section iptables
  local save
  for save in iptables-legacy-save iptables-nft-save ip6tables-legacy-save ip6tables-nft-save; do
    command -v "$save" >/dev/null || continue
    "$save" 2>/dev/null | sed '/^#/d; s/\[[0-9]*:[0-9]*\]$//' | sed "s/^/$save: /"
  done
  section nftables
  if command -v nft >/dev/null; then nft list ruleset 2>/dev/null; fi
  section 'cgroup directories'
  find /sys/fs/cgroup -mindepth 1 -maxdepth 4 -type d 2>/dev/null | sort
  section sysctls
  sysctl -a 2>/dev/null | grep -Ev "$volatile" | sort
  section 'listening sockets'
  local proto addr users pid
  while read -r proto _ _ _ addr _ users; do
    pid=$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$users")
    if [ -n "$pid" ] && ignored "$pid"; then continue; fi
    echo "$proto $addr"
  done < <(ss -lntupH 2>/dev/null) | sort -u
  section 'default directories'
  local d
  for d in "${dirs[@]}"; do
    [ -e "$d" ] || continue
    find "$d" -maxdepth 2 2>/dev/null | sort
  done
}

case ${1:-} in
  snapshot)
    state >"$file"
    echo "[leftovers] snapshot of $(grep -vc '^###' "$file") lines in $file"
    ;;
  compare)
    [ -f "$file" ] || { echo "[leftovers] error: no snapshot $file: run '$0 snapshot' before 'make cluster'" >&2; exit 2; }
    now=$(mktemp)
    trap 'rm -f "$now"' EXIT
    state >"$now"
    # part SECTION FILE: the section's lines (the volatile sysctls left out on both sides,
    # for snapshots taken by an older version of this script).
    part() { sed -n "/^### $1\$/,/^### /{/^### /d;p}" "$2" | grep -Ev "$volatile" || true; }
    # One diff per section, so that every line says where it belongs.
    found=0
    while IFS= read -r s; do
      d=$({ diff <(part "$s" "$file") <(part "$s" "$now") || true; } | sed -n 's/^</  gone:/p; s/^>/  new: /p')
      if [ -n "$d" ]; then
        found=1
        echo "[leftovers] $s differ:"
        echo "$d"
      else
        echo "[leftovers] $s: as before"
      fi
    done < <(sed -n 's/^### //p' "$file")
    if [ "$found" = 1 ]; then
      echo "[leftovers] the machine differs from $file (see above)"
      exit 1
    fi
    echo "[leftovers] the machine is as recorded in $file"
    ;;
  *) sed -n '2,3s/^# //p' "$0" >&2 && exit 2 ;;
esac
