// Compiled for baseline x86-64 / the target's default ISA.
#define FPMATCH_SCAN_NS baseline_impl
#include "hamming_scan_kernels.h"
