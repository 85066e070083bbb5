#!/usr/bin/env bash
# results.sh TARGET LOG SECONDS STATUS: one tab-separated line of a campaign run's results,
# read from libFuzzer's output: target, executions, exec/s, cov, ft, corpus units, corpus
# size, seconds, findings, date, commit.
set -euo pipefail
t=$1 log=$2 secs=$3 status=$4
stat() { awk -v k="stat::$1:" '$1 == k { v = $2 } END { print v }' "$log"; }
# The last status line (`#N DONE cov: .. ft: .. corp: U/S ...`, or the last pulse before a
# crash).
last=$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -1 || true)
field() { awk -v k="$1:" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }' <<<"$last"; }
execs=$(stat number_of_executed_units)
[ -n "$execs" ] || execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
rate=$(stat average_exec_per_sec)
corp=$(field corp)
if [ "$status" = 0 ]; then
    findings=none
else
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/.* //' || true)
    why=$(grep -m1 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)" -A1 "$log" | tr '\n\t' '  ' | cut -c1-160 || true)
    why=$(sed -E "s/thread '[^']*' \([0-9]+\) //; s/ +/ /g" <<<"$why")
    findings="crash (exit $status): ${why} input: ${artifact#*/fuzz/}"
fi
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${execs:-?}" "${rate:-?}" \
    "$(field cov)" "$(field ft)" "${corp%%/*}" "${corp#*/}" "$secs" "$findings" \
    "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
