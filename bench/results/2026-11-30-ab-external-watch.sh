#!/bin/bash
# Experiment: give the alt tunlb's packet threads SCHED_FIFO 10. Bounded: 20 min.
mode=${1:-fifo}
end=$((SECONDS+1200)); done_pids=" "
while [ $SECONDS -lt $end ]; do
  [ -e /tmp/s7-watch.stop ] && exit 0
  for p in $(pgrep -f 'tunlb run .*alt\.sock'); do
    case "$done_pids" in *" $p "*) continue;; esac
    for t in /proc/$p/task/*; do
      if grep -q pkt "$t/comm" 2>/dev/null; then
        tid=$(basename $t)
        if [ "$mode" = fifo ]; then chrt -f -p 10 $tid; else renice -n -10 -p $tid >/dev/null; fi
        echo "$(date +%T) $p/$tid $mode" >> /tmp/s7-watch.log
        done_pids+="$p "
      fi
    done
  done
  sleep 0.1
done
