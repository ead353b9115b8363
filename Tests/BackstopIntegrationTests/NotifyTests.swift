@testable import BackstopCore
import Foundation
import Testing

/// Who speaks for an agent on its notify socket: any process of the run's sandbox, also one
/// that has exited by the time backstopd reads its datagram; no other agent, no other user.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct NotifyTests {
    /// Sends `$1` to `$NOTIFY_SOCKET` and exits, as a `python3 -c` one-liner of an agent does.
    static let sendProgram = "import os, socket, sys; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(sys.argv[1].encode(), os.environ['NOTIFY_SOCKET'])"

    /// A shell agent that, on each SIGUSR1, has a short-lived helper send `message` and says so
    /// on its stdout (the daemon's log) once the helper has exited; `prologue` runs first.
    static func helperAgent(message: String, prologue: String = "", extra: String) -> String {
        let script = """
            notify() { /usr/bin/python3 -c "\(sendProgram)" "$1"; }
            trap 'notify \(message); echo "helper sent \(message) and exited"' USR1
            \(prologue)
            echo "agent waiting for SIGUSR1"
            sleep infinity & while :; do wait $!; done
            """
        return "name = \"demo\"\nnotify = true\n\(extra)\nexec = [\"/bin/bash\", \"-c\", \(Self.tomlString(script))]"
    }

    /// `text` as a TOML basic string.
    static func tomlString(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n") + "\""
    }

    /// Stops backstopd (SIGSTOP) for `seconds` from just before `body`, as a loaded machine
    /// stalls it, then lets it go on (SIGCONT), also when `body` throws. The sleep is the stall
    /// itself, not a wait for something.
    static func stalled(_ harness: DaemonHarness, seconds: Double, _ body: () throws -> Void) throws {
        let daemon = try #require(harness.process?.processIdentifier)
        let resume = Date().addingTimeInterval(seconds)
        kill(daemon, SIGSTOP)
        defer {
            let left = resume.timeIntervalSinceNow
            if left > 0 { Thread.sleep(forTimeInterval: left) }
            kill(daemon, SIGCONT)
        }
        try body()
    }

    @Test("READY=1 from a helper that exited while backstopd was stalled makes the agent ready; no start timeout")
    func readinessFromAnExitedHelper() throws {
        let harness = try DaemonHarness(agents: [Self.helperAgent(message: "READY=1", extra: "start_timeout_sec = 6")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1")
        try harness.log.wait(for: "agent waiting for SIGUSR1", seconds: 10)
        let agent = try #require(try harness.agent().pid)
        try Self.stalled(harness, seconds: 1.5) {
            kill(agent, SIGUSR1)
            try harness.log.wait(for: "helper sent READY=1 and exited", seconds: 1.4)
        }
        try harness.wait(for: "agent-ready", seconds: 10)
        let status = try harness.agent()
        #expect(status.state == "running")
        #expect(status.pid == agent)
        #expect(status.failures.recent == 0)
        #expect(!harness.log.all.contains { $0.contains("start-timeout") })
    }

    @Test("WATCHDOG=1 from helpers that exit at once, under repeated stalls of backstopd, keeps the agent from being judged hung")
    func heartbeatsFromExitedHelpers() throws {
        let harness = try DaemonHarness(agents: [Self.helperAgent(
            message: "WATCHDOG=1", prologue: "notify READY=1", extra: "watchdog_sec = 4\nstart_timeout_sec = 10")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1")
        try harness.wait(for: "agent-ready", seconds: 15)
        let ready = Date()
        let agent = try #require(try harness.agent().pid)
        try harness.log.wait(for: "agent waiting for SIGUSR1", seconds: 10)
        for round in 1...5 {
            try Self.stalled(harness, seconds: 1.5) {
                kill(agent, SIGUSR1)
                try harness.log.wait(for: "helper sent WATCHDOG=1 and exited", count: round, seconds: 1.4)
            }
            // Between stalls the daemon runs: it answers.
            #expect(try harness.ctl("status").status == 0)
        }
        #expect(Date().timeIntervalSince(ready) > 6, "the stalls outlast watchdog_sec, so only the helpers' heartbeats kept the agent")
        let status = try harness.agent()
        #expect(status.state == "running")
        #expect(status.pid == agent)
        #expect(status.failures.recent == 0)
        #expect(!harness.log.all.contains { $0.contains("event=agent-hung") })
    }

    @Test("Another agent cannot reach an agent's notify socket, nor can a user other than root on the host")
    func othersCannotReachTheSocket() throws {
        let forger = """
            forge() { /usr/bin/python3 -c "\(Self.forgeProgram)" "$1"; }
            trap 'forge "${NOTIFY_SOCKET%/*}/demo"' USR1
            echo "agent waiting for SIGUSR1"
            sleep infinity & while :; do wait $!; done
            """
        let harness = try DaemonHarness(agents: [
            DaemonHarness.demoAgent(extra: "notify = true\nstart_timeout_sec = 30"),
            "name = \"other\"\nexec = [\"/bin/bash\", \"-c\", \(Self.tomlString(forger))]",
        ])
        defer { harness.cleanUp() }
        let target = harness.directory + "/run/notify/demo"
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1", agent: "other")
        try harness.log.wait(for: "agent waiting for SIGUSR1", seconds: 10)
        // demo takes 3 s to send READY=1 itself.
        try harness.stage(Paths.sample("slow-start"), as: "v1")
        try harness.log.wait(for: "event=agent-started agent=demo ", seconds: 10)
        #expect(FileManager.default.fileExists(atPath: target), "the socket is there on the host")
        kill(try #require(try harness.agent("other").pid), SIGUSR1)
        try harness.log.wait(for: "forged READY=1:", seconds: 10)
        #expect(harness.log.all.contains { $0.contains("forged READY=1: ENOENT") },
                "the other agent's sandbox holds only its own socket: \(harness.log.all.filter { $0.contains("forged") })")

        let unprivileged = try Command.run("/usr/bin/setpriv", [
            "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", Self.forgeProgram, target,
        ])
        #expect(unprivileged.output.contains("forged READY=1: EACCES"), "\(unprivileged.output) \(unprivileged.error)")
        #expect(try harness.agent().state == "starting", "no forged READY=1 made the agent ready")
        try harness.log.wait(for: "event=agent-ready agent=demo ", seconds: 30)
        #expect(try harness.agent().state == "running")
    }

    /// Tries to send READY=1 to the socket at `sys.argv[1]` and prints how that went (an errno name, or `sent`).
    static let forgeProgram = "import errno, socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); r = s.connect_ex(sys.argv[1]); "
        + "r or s.send(b'READY=1'); print('forged READY=1:', errno.errorcode.get(r, 'sent'), flush=True)"
}
