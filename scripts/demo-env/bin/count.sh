#!/bin/sh
# Demo analysis program: counts lines, words and bytes of its input and the five commonest words, writes the report
# next to the input, and prints the report's path (the one output file parallelizer uploads).
set -eu
in="$1"
out="$in.counts.txt"
{
    printf 'file: %s\n' "$(basename "$in")"
    wc -l -w -c < "$in" | awk '{printf "lines: %s\nwords: %s\nbytes: %s\n", $1, $2, $3}'
    printf 'top words:\n'
    tr -cs 'A-Za-z' '\n' < "$in" | tr 'A-Z' 'a-z' | grep -v '^$' | sort | uniq -c | sort -rn | head -5
} > "$out"
echo "$out"
