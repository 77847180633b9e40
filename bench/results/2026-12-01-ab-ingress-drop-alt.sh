#!/bin/bash
# A/B: the current tunlb with its ingress drop filters removed right after start
( sleep 0.4
  for d in $(ls /sys/class/net); do
    tc filter del dev "$d" ingress pref 213 2>/dev/null && echo "removed on $d" >> /tmp/tcproto/nodrop.log
    tc qdisc del dev "$d" clsact 2>/dev/null
  done ) &
exec /work/main/target/release/tunlb "$@"
