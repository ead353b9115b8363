@testable import BackstopCore
import Foundation
import Testing

/// `memory_max` where no cgroup can hold it (systemd does not run the machine, or no memory controller): an
/// RLIMIT_DATA, which `--check-config` warns about and every failure of the agent names.
/// Under systemd it is the transient scope's cgroup limit: ContainerTests prove that.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct MemoryMaxTests {
    /// Holds the number of MiB its content's `megabytes` file says, each page written, then waits.
    static let hog = "import os, time; n = int(open(os.environ['BACKSTOP_CONTENT'] + '/megabytes').read()); "
        + "hoard = [bytes([i % 256]) * (1 << 20) for i in range(n)]; time.sleep(3600)"

    static let agent = """
        name = "hog"
        exec = ["/usr/bin/python3", "-c", "\(hog)"]
        failure_window_sec = 60
        [agent.sandbox]
        user = "root"
        private_tmp = false
        memory_max = "64M"
        """

    @Test("backstopd --check-config says, naming the agent and the key, when memory_max can only be an RLIMIT_DATA; where a cgroup can hold it, it does not")
    func checkConfigWarnsOfRlimitOnly() throws {
        let harness = try DaemonHarness(agents: [Self.agent])
        defer { harness.cleanUp() }
        let result = try Command.run(Paths.binary("backstopd"), ["--check-config", "--config", harness.configPath])
        #expect(result.status == 0, "a warning, not an error: \(result.error)")
        let warning = "backstopd: warning: agent hog: sandbox: memory_max (64M) can only be an RLIMIT_DATA here"
        if BubblewrapSandbox.memoryCgroupUnavailableReason == nil {
            #expect(!result.error.contains("RLIMIT_DATA"), "\(result.error)")
        } else {
            #expect(result.error.contains(warning), "\(result.error)")
        }
    }

    @Test("Where no cgroup can hold it, an agent that allocates past memory_max (RLIMIT_DATA) fails with the limit named in its exit", .enabled(
        if: Environment.isRoot && BubblewrapSandbox.memoryCgroupUnavailableReason != nil,
        "needs root, and a machine where no cgroup can hold memory_max: elsewhere it is a cgroup limit (ContainerTests)"))
    func rlimitOnlyExitNamesTheLimit() throws {
        let content = try TemporaryDirectory()
        defer { content.remove() }
        try "200\n".write(toFile: content.path + "/megabytes", atomically: true, encoding: .utf8)
        let harness = try DaemonHarness(agents: [Self.agent])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(content.path, as: "v1", agent: "hog")
        try harness.wait(for: "agent-exited", seconds: 20)
        let exit = try #require(harness.log.all.first { $0.contains("event=agent-exited ") })
        #expect(exit.contains("reason=exited"), "\(exit)")
        #expect(exit.contains("memory_max 64M holds this agent only as RLIMIT_DATA"), "\(exit)")
    }
}
