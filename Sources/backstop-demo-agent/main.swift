// backstop-demo-agent: a stand-in for an EDR sensor, used to re-enact the
// July 2024 "Channel File 291" failure under Backstop's supervision.
//
// Usage: backstop-demo-agent --content DIR [--timestamp-file PATH]
//
// Content format
// ==============
// A content version is a directory. In every file `#` starts a comment that
// runs to the end of the line; blank lines are ignored; tokens are separated by
// spaces or tabs.
//
// DIR/templates.conf (required) declares template types:
//
//     template <name> fields=<N>
//
//   N (1...65536) is the number of input fields the sensor supplies for events
//   of that type. Template names are unique.
//
// DIR/channel-*.conf (zero or more "channel files", read in name order) hold
// template instances and at most one behaviour line across all of them:
//
//     instance <template-name> <value1>,<value2>,...
//     behavior hang-after-start     READY=1, then no heartbeats; blocks forever
//                                   ignoring SIGTERM/SIGINT (only SIGKILL ends it)
//     behavior exit <code>          exits with <code> (1...255) right after loading
//     behavior slow-start <s>       waits <s> seconds before READY=1
//     behavior crash-after <s>      runs normally, then after <s> seconds reads
//                                   past the first template's input array (SIGSEGV)
//
//   Instance values are comma-separated and non-empty; the rest of the line
//   after the template name is the value list. Each value is a match criterion
//   for the template field at the same position.
//
// The interpreter bug being re-enacted
// ====================================
// Each template's input array sits flush against a PROT_NONE guard page. When
// evaluating an instance the interpreter reads as many input fields as the
// INSTANCE supplies, trusting the content rather than the template. An
// instance with more values than its template has fields therefore reads the
// guard page and the process dies by a genuine SIGSEGV, on every start.
//
// Exit behaviour
// ==============
//   0    stopped by SIGTERM or SIGINT
//   2    content error (unreadable directory, missing templates.conf, syntax
//        error, unknown template, ...): a refusal, not a crash
//   64   command-line usage error (from ArgumentParser)
//   1    any other startup failure (for example mmap failing)
//   SIGSEGV   an instance overran its template (the Channel File 291 failure)
//
// Environment
// ===========
//   BACKSTOP_CONTENT_VERSION  version label (default: basename of DIR)
//   NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID   sd_notify / watchdog, as set by
//                             systemd or Backstop

DemoAgent.main()
