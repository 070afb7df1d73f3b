#!/usr/bin/env bash
# Where a process's memory goes, mapping by mapping, averaged over several
# processes of the same kind (e.g. the shims of 20 idle containers):
#
#   bench/daemon/smaps.sh PID...
#   bench/daemon/smaps.sh $(pgrep -f vessel-shim)
#
# Prints, per mapping (file and permissions, or [heap], [stack], anonymous),
# the average Rss, Pss and Private_Dirty in KiB, largest Pss first, and the
# totals. For the binary itself, `r--p` after `r-xp` is its RELRO segment
# (.data.rel.ro and .got once the loader has relocated and sealed them).
set -euo pipefail

[ $# -gt 0 ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

for pid in "$@"; do
    [ -r "/proc/$pid/smaps" ] || continue
    awk -v pid="$pid" '
        /^[0-9a-f]+-[0-9a-f]+ / {
            perms = $2
            name = (NF >= 6) ? $6 : "[anon]"
            sub(".*/", "", name)
            # Number the mappings of one file, so the data segments of the
            # binary and of each library stay apart.
            seen[name]++
            key = name " " perms
            if (name !~ /^\[/) key = key " #" seen[name]
            next
        }
        $1 == "Rss:" { rss[key] += $2 }
        $1 == "Pss:" { pss[key] += $2 }
        $1 == "Private_Dirty:" { pd[key] += $2 }
        END { for (k in rss) printf "%s\t%d\t%d\t%d\n", k, rss[k], pss[k], pd[k] }
    ' "/proc/$pid/smaps"
done | awk -F'\t' -v n=$# '
    { rss[$1] += $2; pss[$1] += $3; pd[$1] += $4 }
    END {
        printf "%-44s %8s %8s %8s\n", "mapping (average of " n ")", "rss", "pss", "priv_dirty"
        sort = "sort -t \"\t\" -k1,1nr | cut -f2-"
        for (k in rss) if (rss[k] > 0)
            printf "%d\t%-44s %8.0f %8.0f %8.0f\n", pss[k], k, rss[k] / n, pss[k] / n, pd[k] / n | sort
        close(sort)
        for (k in rss) { tr += rss[k]; tp += pss[k]; td += pd[k] }
        printf "%-44s %8.0f %8.0f %8.0f\n", "total", tr / n, tp / n, td / n
    }
'
