#ifndef BACKSTOP_CARCHIVE_SHIM_H
#define BACKSTOP_CARCHIVE_SHIM_H

#include <archive.h>
#include <archive_entry.h>

#endif
