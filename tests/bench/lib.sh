# lib.sh - shared helpers of the image benchmarks (sourced; bc is not installed by default,
# so arithmetic on the seconds the tools print is done in awk).
#   secs_of OUTPUT      the seconds of "Run completed in X seconds" (both tools print it)
#   median              median of numbers on stdin
#   div A B FMT, ratio A B
secs_of() { sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$1"; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
div() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { if (b > 0) printf f, a / b; else print "n/a" }'; }
ratio() { div "$1" "$2" %.2fx; }
