#include "qrt.h"

const char *qrt_version(void) { return "0.1.0"; }
