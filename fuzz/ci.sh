#!/usr/bin/env bash
# Brief fuzzing for CI: runs every target of this directory for FUZZ_SECONDS (default 20)
# from its committed seeds and prints executions, coverage and findings.
#
#   LIVEMIG_FUZZ=0   only build the targets (plain, not instrumented)
#   LIVEMIG_FUZZ=1   also install cargo-fuzz when it is missing (a few minutes of compiling)
#   (unset)          run when cargo-fuzz is installed, otherwise say so and only build
#
# Exits 0 when the tool is missing or cannot build instrumented binaries on this toolchain
# (after a plain build of the targets), non-zero when a target crashes, hangs, leaks memory
# past the limits or does not build.
set -uo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SECONDS:-20}
# No single allocation may exceed this many MiB: every buffer sized by the input is capped or
# grows only as data arrives. The largest legitimate allocations are the 1 MiB stream reader
# buffer and block-chunk buffers (see README.md, "Allocation limit"), so 64 MiB leaves room
# while catching any allocation a length field in the input can inflate.
malloc_mb=${FUZZ_MALLOC_LIMIT_MB:-64}
# Without fuzzing the targets still must build.
plain_build() {
    cargo build -q || { echo "fuzz: FAILED: the targets do not build"; exit 1; }
    echo "fuzz: $1; the targets build"
    exit 0
}
case "${LIVEMIG_FUZZ:-}" in
    0) plain_build "fuzzing skipped (LIVEMIG_FUZZ=0)" ;;
esac
if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "${LIVEMIG_FUZZ:-}" = 1 ]; then
        echo "fuzz: installing cargo-fuzz"
        if ! cargo install -q --locked cargo-fuzz; then
            plain_build "SKIP: cargo-fuzz did not install"
        fi
    else
        plain_build "SKIP: cargo-fuzz is not installed (LIVEMIG_FUZZ=1 installs it)"
    fi
fi

# cargo-fuzz passes nightly-only flags (sanitizer, coverage); stable accepts them this way.
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
echo "fuzz: building $(echo $targets | wc -w) targets with coverage and AddressSanitizer"
if ! cargo fuzz build -O >"$log_dir/build.log" 2>&1; then
    if grep -q "error\[E" "$log_dir/build.log"; then
        tail -40 "$log_dir/build.log"
        echo "fuzz: FAILED: the targets do not build"
        exit 1
    fi
    tail -20 "$log_dir/build.log"
    plain_build "SKIP: this toolchain cannot build instrumented binaries"
fi

status=0
for t in $targets; do
    mkdir -p "corpus/$t"
    max_len=16384
    [ "$t" = analyze ] && max_len=65536
    cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=25 -rss_limit_mb=1024 -malloc_limit_mb="$malloc_mb" \
        -max_len="$max_len" -print_final_stats=1 >"$log_dir/$t.log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_dir/$t.log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log_dir/$t.log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | cut -d' ' -f2)
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | cut -d' ' -f2)
    if [ $rc -eq 0 ]; then
        echo "fuzz: $t: ${runs:-?} executions in ${secs}s, coverage ${cov:-?} edges / ${ft:-?} features, corpus $(ls "corpus/$t" | wc -l) inputs, no findings"
    else
        echo "fuzz: $t: FINDING after ${runs:-?} executions (exit $rc):"
        grep -E -A40 'ERROR: libFuzzer|ERROR: AddressSanitizer|panicked at|==ERROR' "$log_dir/$t.log" | head -80
        ls artifacts/"$t"/ 2>/dev/null | sed "s|^|fuzz: artifact: fuzz/artifacts/$t/|"
        status=1
    fi
done
exit $status
