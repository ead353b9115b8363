#ifndef BACKSTOP_CFUZZER_H
#define BACKSTOP_CFUZZER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's driver (compiler-rt, FuzzerDriver.cpp): runs the fuzzing loop with
/// `callback` as the target, taking libFuzzer's options from argc/argv.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
