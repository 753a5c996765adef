#!/bin/bash
# doc-commands.sh - every shell command in README.md, docs/*.md and the EXAMPLES of
# docs/man/*.[0-9], each with what the tests do with it.  Used by
# tests/interop/test_docs_commands.sh (runs or checks them natively) and
# tests/vm/test_docs_devices.sh (runs the device commands), so the docs cannot drift
# from the code.
#
# What counts as a command:
#   - in a fenced block marked ```sh (also bash, shell) or not marked at all: every
#     line but blank and comment (#) lines; a line ending in \ continues on the next
#     (joined as bash joins them: the backslash and the newline go);
#   - in a ```console block: the lines that start with "$ " (the rest is output);
#   - in a man page's EXAMPLES section: the lines inside .EX/.EE or .nf/.fi ("$ " dropped).
# Blocks in any other language (text, udev, json, ini, ...) are not commands: mark
# diagrams, rules, sample output that way.
#
# Output, one line per command, in document order (README.md, then docs/*.md, then
# docs/man/*):
#     CLASS <TAB> FILE:LINE <TAB> REASON <TAB> COMMAND
# CLASS (from the rules below; the first that matches wins):
#   run         run natively in a scratch directory by test_docs_commands.sh
#   quickstart  README's quick start: the package installs are not run, the rest is
#   dev         a device command, run as root by tests/vm/test_docs_devices.sh
#               (test_docs_commands.sh checks its verb and options against the usage)
#   dev-user    the same as an unprivileged user
#   check       not run (REASON says why); test_docs_commands.sh checks what it can:
#               syntax, paths, make targets, env variables and options the scripts
#               read, and runs its ublkd img / qemu-img bench with tiny counts
#   exclude     not run and nothing of ublkd's in it to check beyond syntax (REASON)
# A command no rule matches is printed with CLASS "unclassified", and this script
# exits 1: a new command in the docs needs a rule (and a test), not silence.
#
#   tests/doc-commands.sh [ROOT]     (default: the checkout this script is in)
set -u
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT" || exit 2

# CLASS <TAB> FILE <TAB> ERE the command matches <TAB> REASON
RULES=$(cat <<'EOF'
quickstart	README.md	^S=.*apt-get install .* && make deps && make && 	apt-get and `make deps` install Debian packages as root; the rest (make, img create, the img info fallback) runs in a scratch copy of the tree
check	README.md	^make deps && make test$	`make deps` installs packages as root and `make test` is the whole CI run (an hour, the VM suite included): only `make -n` of both targets here
dev	README.md	^sudo build/ublkd (add|list|del|recover|resize|upgrade) 	
dev	README.md	^build/ublkd features$	
run	README.md	^build/ublkd img 	
dev-user	docs/UNPRIVILEGED.md	^ublkd (add|list|del) 	
exclude	docs/UNPRIVILEGED.md	^(docker|podman) run 	needs docker/podman on a host with the ublk driver; it names no ublkd option
check	docs/PERFORMANCE.md	^(qemu-img|ublkd img) bench 	benchmark template (minutes of I/O at the documented counts); run here with -c 64 and its placeholders filled in
check	docs/PERFORMANCE.md	^valgrind --tool=callgrind ublkd img bench 	profiling run (minutes under callgrind); its ublkd img bench runs here with -c 64, without valgrind
check	docs/PERFORMANCE.md	^fio --name=	benchmark template (a|b|c are alternatives; 3 s per run and a device to run on): fio --parse-only with the first of each
exclude	docs/PERFORMANCE.md	^A=[^ ]+ B=[^ ]+( |$)	shell variables for the next command: binaries built from older commits
check	docs/PERFORMANCE.md	^tests/vm/ublk-vm .*tests/vm/bench-ab\.sh$	A/B benchmark in a QEMU TCG guest (a boot and minutes of fio); here: the scripts exist, read the variables and options given, and ublkd add takes the options in CONFIGS
check	docs/PERFORMANCE.md	^[A-Z_=0-9 ]*tests/bench/bench-threads\.sh 	benchmark (rounds of 300000-request runs against two binaries); here: the script exists and reads the variables given
check	docs/PERFORMANCE.md	^(VM_KERNEL=[0-9.]+ )?make bench-kublk( |$)	boots a guest for minutes of fio and fetches kublk's sources (170 MB): here `make -n` of the target
check	docs/PERFORMANCE.md	^VM_KERNEL=[0-9.]+ ([A-Z_]+=('[^']*'|[a-z0-9]+) )*tests/vm/bench-kublk\.sh$	boots a guest for minutes of fio (BENCH_ROWS picks rows by label); here: the script exists and reads the variables given
check	docs/PERFORMANCE.md	^VM_KERNEL=7\.3 [A-Za-z_=0-9 ]*tests/vm/bench(-zc)?\.sh	boots the 7.3 guest for minutes of fio; here: the script exists and reads the variables given
EOF
)

extract() {
  local f
  for f in README.md docs/*.md; do
    awk -v F="$f" '
      function emit(line) { gsub(/\t/, " ", line); printf "%s:%d\t%s\n", F, start, line }
      # A fence, also indented inside a list item; its indentation is stripped from the block.
      /^[ \t]*```/ {
        if (!inb) {
          inb = 1; lang = $0; sub(/^[ \t]*```[ \t]*/, "", lang); sub(/[ \t].*/, "", lang)
          match($0, /^[ \t]*/); ind = RLENGTH; pend = ""; next
        }
        if (pend != "") { emit(pend); pend = "" }
        inb = 0; next
      }
      !inb { next }
      {
        line = substr($0, ind + 1)
        if (lang == "console") {
          if (pend == "" && line !~ /^\$ /) next
          if (pend == "") { line = substr(line, 3); start = NR }
        } else if (lang == "" || lang == "sh" || lang == "bash" || lang == "shell") {
          if (pend == "" && (line ~ /^[ \t]*$/ || line ~ /^[ \t]*#/)) next
          if (pend == "") start = NR
        } else next
        if (line ~ /\\$/) { pend = pend substr(line, 1, length(line) - 1); next }
        emit(pend line); pend = ""
      }
      END { if (inb) { printf "%s: unterminated code block\n", F > "/dev/stderr"; exit 1 } }
    ' "$f" || return 1
  done
  for f in docs/man/*.[0-9]; do
    [ -f "$f" ] || continue
    awk -v F="$f" '
      /^\.SH/ { ex = ($0 ~ /^\.SH +"?EXAMPLES?"?/); next }
      ex && /^\.(EX|nf)/ { inb = 1; next }
      ex && /^\.(EE|fi)/ { inb = 0; next }
      ex && inb && !/^\./ && !/^[ \t]*$/ {
        line = $0; gsub(/\\-/, "-", line); gsub(/\\e/, "\\", line); sub(/^[ \t]*(\$ )?/, "", line)
        printf "%s:%d\t%s\n", F, NR, line
      }
    ' "$f"
  done
}

records=$(extract) || exit 2
# One awk for all of it: the test VM runs this under TCG, where a shell loop of
# here-strings cost seconds.  ENVIRON, not -v: -v would eat the rules' backslashes.
RULES=$RULES awk -F'\t' '
  BEGIN {
    n = split(ENVIRON["RULES"], lines, "\n")
    for (i = 1; i <= n; i++) {
      if (lines[i] == "") continue
      split(lines[i], f, "\t"); k++
      rc[k] = f[1]; rf[k] = f[2]; re[k] = f[3]; why[k] = (f[4] == "" ? "-" : f[4])
    }
  }
  {
    where = $1; file = where; sub(/:[0-9]+$/, "", file)
    cmd = substr($0, length($1) + 2)
    class = "unclassified"; reason = "no rule in tests/doc-commands.sh matches this command"
    for (i = 1; i <= k; i++)
      if (rf[i] == file && cmd ~ re[i]) { class = rc[i]; reason = why[i]; break }
    if (class == "unclassified") bad = 1
    # REASON is never empty: read with IFS=tab takes two tabs for one
    printf "%s\t%s\t%s\t%s\n", class, where, reason, cmd
  }
  END { exit bad }
' <<<"$records"
