import Testing
@testable import BackstopCore

@Suite("The environment an agent starts with")
struct AgentEnvironmentVariablesTests {
    @Test("Only PATH and the locale pass from backstopd's environment; the agent's own entries go on top")
    func inheritedAndConfigured() {
        let daemon = [
            "PATH": "/usr/bin:/bin", "LANG": "de_DE.UTF-8", "LC_MESSAGES": "C", "LANGUAGE": "de", "HOME": "/root",
            "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_PID": "1", "WATCHDOG_USEC": "30000000", "LISTEN_FDS": "1",
            "INVOCATION_ID": "x", "JOURNAL_STREAM": "8:1", "STATE_DIRECTORY": "/var/lib/backstop", "MAINPID": "1",
        ]
        #expect(AgentEnvironment.variables(configured: ["TZ": "UTC", "LANG": "C.UTF-8"], daemon: daemon) == [
            "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_MESSAGES": "C", "TZ": "UTC",
        ])
    }

    @Test("Without PATH or any locale variable, systemd's defaults apply")
    func defaults() {
        #expect(AgentEnvironment.variables(configured: [:], daemon: ["TERM": "xterm"]) == [
            "PATH": AgentEnvironment.defaultPath, "LANG": "C.UTF-8",
        ])
        #expect(AgentEnvironment.variables(configured: [:], daemon: ["LC_ALL": "C"]) == ["PATH": AgentEnvironment.defaultPath, "LC_ALL": "C"],
                "a locale variable of backstopd's is kept as the locale, without a LANG added")
    }

    @Test("Backstop's own variables are reserved; names follow the shell's rules")
    func names() {
        for name in ["BACKSTOP_CONTENT", "WATCHDOG_PID", "NOTIFY_SOCKET", "BASH_ENV", "SHELLOPTS", "PWD", "_"] {
            #expect(AgentEnvironment.reservation(of: name) != nil, "\(name)")
        }
        #expect(AgentEnvironment.reservation(of: "WATCHDOG") == nil && AgentEnvironment.reservation(of: "TZ") == nil)
        #expect(AgentEnvironment.isValidName("_A1") && AgentEnvironment.isValidName("tz"))
        #expect(!AgentEnvironment.isValidName("1A") && !AgentEnvironment.isValidName("") && !AgentEnvironment.isValidName("A-B"))
    }
}
