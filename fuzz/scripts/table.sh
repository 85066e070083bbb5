#!/usr/bin/env bash
# table.sh: writes the campaign results table (from fuzz/campaign/*.tsv) into fuzz/README.md
# between its campaign markers.
set -euo pipefail
cd "$(dirname "$0")/.."
begin='<!-- campaign:begin (written by `just fuzz-campaign`; do not edit) -->'
end='<!-- campaign:end -->'
table=$(mktemp)
{
    echo "$begin"
    echo
    echo '| target | executions | exec/s | cov | ft | corpus (units / size) | time (s) | findings | run on (commit) |'
    echo '|---|---:|---:|---:|---:|---:|---:|---|---|'
    for f in campaign/*.tsv; do
        IFS=$'\t' read -r t execs rate cov ft units size secs findings date commit <"$f"
        printf '| `%s` | %s | %s | %s | %s | %s / %s | %s | %s | %s (%s) |\n' "$t" \
            "$(printf "%'d" "$execs" 2>/dev/null || echo "$execs")" "$rate" "$cov" "$ft" \
            "$units" "$size" "$secs" "${findings//|/\\|}" "$date" "$commit"
    done
    echo
    echo "$end"
} >"$table"
if ! grep -qF "$begin" README.md; then
    printf '\n%s\n' "$(cat "$table")" >>README.md
else
    awk -v b="$begin" -v e="$end" -v t="$table" '
        $0 == b { while ((getline line < t) > 0) print line; skip = 1; next }
        $0 == e { skip = 0; next }
        !skip { print }' README.md >README.md.new
    mv README.md.new README.md
fi
rm -f "$table"
