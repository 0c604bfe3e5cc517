// Compiled with -mpopcnt (see CMakeLists.txt); only called when the CPU has it.
#define FPMATCH_SCAN_NS popcnt_impl
#include "hamming_scan_kernels.h"
