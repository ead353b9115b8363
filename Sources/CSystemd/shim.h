#ifndef BACKSTOP_CSYSTEMD_SHIM_H
#define BACKSTOP_CSYSTEMD_SHIM_H

#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-id128.h>
#include <systemd/sd-journal.h>
#include <systemd/sd-login.h>

#endif
