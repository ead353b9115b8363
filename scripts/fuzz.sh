#!/bin/sh
# Runs the libFuzzer targets built in FUZZ_DIR, each for SECONDS from its seed corpus in
# Fuzz/Corpus/<target>, and sorts what crashed them. An input on which TOMLKit's parser
# aborts is contained when backstopd refuses it with a message (it parses in a child
# first): it is reported, to be added to Fuzz/Aborts/configuration/. Any other crash,
# hang or memory blow-up fails the run.
# Usage: fuzz.sh FUZZ_DIR SECONDS BACKSTOPD TARGET...
set -u
dir=$1 seconds=$2 backstopd=$3
shift 3
for target in "$@"; do
    options=""
    # The configuration target goes on after a crash, so that TOMLKit's aborts do not end it.
    [ "$target" = configuration ] && options="-fork=1 -ignore_crashes=1"
    mkdir -p "$dir/corpus/$target" "$dir/artifacts/$target"
    ASAN_OPTIONS=detect_leaks=0 SWIFT_BACKTRACE=enable=no "$dir/debug/fuzz-$target" \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 $options \
        -artifact_prefix="$dir/artifacts/$target/" "$dir/corpus/$target" "Fuzz/Corpus/$target"
done
failed=0
for artifact in $(find "$dir/artifacts" -type f | sort); do
    case "$artifact" in
    */configuration/crash-*)
        if "$backstopd" --check-config --config "$artifact" 2>&1 | grep -q "makes TOMLKit's parser abort"; then
            echo "contained (TOMLKit's parser aborts; backstopd refuses it): $artifact"
            continue
        fi ;;
    esac
    echo "crashed or hung a fuzz target: $artifact"
    failed=1
done
exit $failed
