#!/usr/bin/env bash
# Describes the machine a benchmark ran on (for bench/RESULTS.md).
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) online CPUs"
echo "memory: $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "kernel: $(uname -sr)"
echo "virtualization: $(systemd-detect-virt 2>/dev/null || lscpu | sed -n 's/^Hypervisor vendor: *//p' || echo unknown)"
echo "rustc: $(rustc --version)"
echo "nginx: $(nginx -v 2>&1 | sed 's/.*: //')"
echo "wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git -C "$(dirname "$0")/.." rev-parse --short HEAD)"
