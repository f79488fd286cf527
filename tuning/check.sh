#!/usr/bin/env bash
# Reports the host settings shardgate's tuning guide recommends, what this host has,
# and which fall short. Read-only: changes nothing.
#   tuning/check.sh [PID]    # with a running shardgate's PID, also its own limits
set -uo pipefail
PID=${1:-}
short=0
row() { # name have want ok
  local mark="ok"
  [ "$4" = 1 ] || { mark="SET"; short=$((short + 1)); }
  printf '%-4s %-34s %-22s %s\n' "$mark" "$1" "$2" "$3"
}
sysctl_min() { # key min
  local v
  v=$(sysctl -n "$1" 2>/dev/null | awk '{print $1}') || v=""
  [ -n "$v" ] || { row "$1" "unreadable" ">= $2" 1; return; }
  row "$1" "$v" ">= $2" "$([ "$v" -ge "$2" ] && echo 1 || echo 0)"
}
echo "shardgate host check ($(uname -sr), $(nproc) CPUs)"
printf '%-4s %-34s %-22s %s\n' "" setting "this host" recommended
sysctl_min net.core.somaxconn 4096
sysctl_min net.ipv4.tcp_max_syn_backlog 8192
range=$(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | awk '{print $2 - $1}')
row net.ipv4.ip_local_port_range "${range:-?} ports" ">= 60000 ports" "$([ "${range:-0}" -ge 60000 ] && echo 1 || echo 0)"
tw=$(sysctl -n net.ipv4.tcp_tw_reuse 2>/dev/null)
row net.ipv4.tcp_tw_reuse "${tw:-?}" "1 (or 2: loopback only)" "$([ "${tw:-0}" = 1 ] && echo 1 || echo 0)"
sysctl_min fs.file-max 1048576
sysctl_min fs.nr_open 1048576

if [ -n "$PID" ] && [ -r "/proc/$PID/limits" ]; then
  nofile=$(awk '/Max open files/ {print $4}' "/proc/$PID/limits")
  memlock=$(awk '/Max locked memory/ {print $4}' "/proc/$PID/limits")
  who="pid $PID"
else
  nofile=$(ulimit -n)
  memlock=$(ulimit -l)
  who="this shell"
fi
row "open files ($who)" "$nofile" ">= 1048576" "$([ "$nofile" = unlimited ] || [ "$nofile" -ge 1048576 ] && echo 1 || echo 0)"
# Kernels >= 5.12 charge io_uring rings to the memory cgroup, not memlock.
kmaj=$(uname -r | cut -d. -f1); kmin=$(uname -r | cut -d. -f2)
if [ "$kmaj" -gt 5 ] || { [ "$kmaj" -eq 5 ] && [ "$kmin" -ge 12 ]; }; then
  row "locked memory ($who)" "$memlock" "any (kernel >= 5.12)" 1
else
  row "locked memory ($who)" "$memlock" "unlimited (io_uring)" "$([ "$memlock" = unlimited ] && echo 1 || echo 0)"
fi
uring=$(sysctl -n kernel.io_uring_disabled 2>/dev/null || echo 0)
row kernel.io_uring_disabled "$uring" "0 (only for io_uring)" "$([ "$uring" = 0 ] && echo 1 || echo 0)"

gov=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo "n/a")
row "cpu0 frequency governor" "$gov" "performance" "$([ "$gov" = performance ] || [ "$gov" = n/a ] && echo 1 || echo 0)"
if pgrep -x irqbalance >/dev/null; then
  row irqbalance "running" "stopped if IRQs pinned" 0
else
  row irqbalance "not running" "stopped if IRQs pinned" 1
fi
if [ -n "$PID" ] && [ -d "/proc/$PID/task" ]; then
  echo "worker threads and the CPUs they may run on:"
  for t in /proc/"$PID"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null)
    case "$name" in shardgate-w*) printf '     %-16s %s\n' "$name" "$(awk '/Cpus_allowed_list/ {print $2}' "$t/status")" ;; esac
  done
fi
nics=$(grep -E 'eth|ens|enp|mlx|ixgbe|i40e|virtio.*input' /proc/interrupts 2>/dev/null | awk '{print $1}' | tr -d ':' | head -8)
if [ -n "$nics" ]; then
  echo "NIC interrupts and their CPUs (tuning/pinning.md):"
  for irq in $nics; do printf '     irq %-6s cpus %s\n' "$irq" "$(cat "/proc/irq/$irq/smp_affinity_list" 2>/dev/null)"; done
fi
echo
if [ "$short" -eq 0 ]; then echo "all recommended settings are in place"; else echo "$short setting(s) differ from tuning/ (SET)"; fi
