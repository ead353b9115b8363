import BackstopCore
import Foundation
import Testing

/// A store prepared once and copied for each run: v1 active and known-good, v2 staged
/// (good), v3 staged (the Channel-File-291 content), v0 quarantined (content that makes the agent exit 3); and a gzip bundle.
final class CrashFixture: @unchecked Sendable {
    // @unchecked: used by one serialized suite at a time.
    let harness: DaemonHarness
    let template: String
    let bundle: String
    var stateDirectory: String { harness.directory + "/state" }

    init() throws {
        harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: "notify = true\nkeep_versions = 3\nfailure_threshold = 2\nrestart_delay_ms = 0")])
        template = harness.directory + "/template"
        bundle = harness.directory + "/bundle.tar.gz"
        do {
            try harness.start()
            try harness.stage(Paths.sample("v1-good"), as: "v1")
            try harness.wait(for: "agent-ready")
            try check(try harness.ctl("promote", "demo", "v1"))
            try harness.stage(Paths.sample("exit-error"), as: "v0")
            try harness.wait(for: "content-quarantined")
            try harness.wait(for: "agent-ready", count: 2)
            try harness.stage(Paths.sample("v3-good"), as: "v2", activate: false)
            try harness.stage(Paths.sample("v2-channel-291"), as: "v3", activate: false)
            harness.stop()
            try check(try Command.run("/bin/cp", ["-a", stateDirectory, template]))
            try check(try Command.run("/usr/bin/tar", ["-czf", bundle, "-C", Paths.sample("v3-good"), "."]))
        } catch {
            harness.cleanUp()
            throw error
        }
    }

    func check(_ result: CommandResult) throws {
        guard result.status == 0 else { throw HarnessError.failed("command failed: \(result.error)") }
    }

    /// Puts the template back as the daemon's state.
    func reset() throws {
        ContentStore.removeTree(stateDirectory)
        try check(try Command.run("/bin/cp", ["-a", template, stateDirectory]))
    }

    /// Checks what must hold after any crash and a restart, with the daemon stopped:
    /// the state file reads; the active link names the ledger's active version, which is
    /// not quarantined and whose files match its digest; every version on disk has a
    /// record and matches it, and every record has its files (or, quarantined, says they
    /// were removed); every version whose staging was confirmed is still there unless
    /// the daemon said it removed it.
    /// - Returns: the problems found, empty when none.
    func invariantProblems(confirmedStaged: Set<String>, removedSaid: Set<String>) -> [String] {
        let store = ContentStore(stateDirectory: stateDirectory, agent: "demo")
        var problems: [String] = []
        let state: AgentStateFile
        do {
            guard let loaded = try AgentStateFile.load(path: store.stateFile) else { return ["no state file"] }
            state = loaded
        } catch {
            return ["state file unreadable: \(error)"]
        }
        let ledger = state.ledger
        if store.activeTarget() != ledger.active {
            problems.append("active link names \(store.activeTarget() ?? "nothing"), the state \(ledger.active ?? "nothing")")
        }
        if let active = ledger.active {
            if let record = ledger.record(active) {
                if record.standing == .quarantined { problems.append("quarantined \(active) is active") }
            } else {
                problems.append("active \(active) has no record")
            }
        }
        let onDisk = Set((try? FileManager.default.contentsOfDirectory(atPath: store.versionsDirectory)) ?? [])
        for record in ledger.versions {
            if record.filesRemovedAt != nil {
                if record.standing != .quarantined { problems.append("\(record.id) has no files but is \(record.standing)") }
                if onDisk.contains(record.id) { problems.append("\(record.id) is marked removed but its files are there") }
                continue
            }
            guard onDisk.contains(record.id) else { problems.append("\(record.id) is recorded but has no files"); continue }
            do { try store.verify(record) } catch { problems.append("\(record.id): \(error)") }
        }
        for id in onDisk where ledger.record(id) == nil { problems.append("\(id) is on disk but not recorded") }
        for id in confirmedStaged.subtracting(removedSaid) where ledger.record(id) == nil {
            problems.append("\(id) was staged but is lost")
        }
        return problems
    }

    /// Checks that every quarantine the state file records has its mark beside the versions
    /// (what keeps it when both generations of the state file are lost); with `exactly`,
    /// also that no mark is left of a version not quarantined (after a restart has settled).
    /// - Returns: the problems found, empty when none.
    func quarantineMarkProblems(exactly: Bool) -> [String] {
        let store = ContentStore(stateDirectory: stateDirectory, agent: "demo")
        guard let state = try? AgentStateFile.load(path: store.stateFile) else { return [] }
        let marks = (try? FileManager.default.contentsOfDirectory(atPath: store.quarantineDirectory)) ?? []
        let marked = Set(marks.filter { $0.hasSuffix(".json") }.map { String($0.dropLast(".json".count)) })
        let quarantined = Set(state.ledger.quarantined)
        var problems = quarantined.subtracting(marked).sorted().map { "quarantined \($0) has no mark" }
        if exactly { problems += marked.subtracting(quarantined).sorted().map { "\($0) has a mark but is not quarantined" } }
        return problems
    }

    /// Version ids the daemon's log says were removed (garbage collection or its recovery).
    static func removedVersions(in lines: [String]) -> Set<String> {
        var ids = Set<String>()
        for line in lines where line.contains("Removing the files of old versions") || line.contains("have no files any more") {
            guard let range = line.range(of: "versions=") else { continue }
            let list = line[range.upperBound...].prefix { $0 != " " && $0 != "]" }
            ids.formUnion(list.split(separator: ",").map(String.init))
        }
        return ids
    }
}

@Suite(
    .serialized, .timeLimit(.minutes(10)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"),
    .enabled(if: Environment.haveFaultInjection, "needs a debug build of backstopd (fault injection is compiled out of release builds)"))
struct CrashSafetyTests {
    /// One operation: backstopctl commands, then what shows that it and its consequences are done.
    struct Operation: CustomTestStringConvertible, Sendable {
        var name: String
        var commands: [[String]]
        /// Log texts that end it, each with the number of times it must appear after the
        /// first line with `after` (from the start when nil).
        var settled: [(text: String, count: Int, after: String?)]
        var testDescription: String { name }
        /// Whether `lines` show the operation and its consequences done.
        func isSettled(_ lines: [String]) -> Bool {
            settled.allSatisfy { text, count, after in
                var candidates = lines[...]
                if let after {
                    guard let start = lines.firstIndex(where: { $0.contains(after) }) else { return false }
                    candidates = lines[(start + 1)...]
                }
                return candidates.filter { $0.contains(text) }.count >= count
            }
        }
        /// Versions these commands stage.
        var staged: Set<String> {
            Set(commands.filter { $0.first == "stage" }.compactMap { command in command.firstIndex(of: "--version").map { command[$0 + 1] } })
        }
    }

    static let operations: [Operation] = [
        Operation(
            name: "stage a directory (and remove the oldest version's files)",
            commands: [["stage", "demo", Paths.sample("v3-good"), "--version", "v5"]],
            settled: [("event=content-staged ", 1, nil), ("Removed the files of old versions", 1, nil)]),
        Operation(
            name: "stage a gzip archive, then another version (removing an old staged version)",
            commands: [["stage", "demo", "BUNDLE", "--version", "v5"], ["stage", "demo", Paths.sample("v1-good"), "--version", "v6"]],
            settled: [("event=content-staged ", 2, nil), ("Removed the files of old versions", 2, nil)]),
        Operation(
            name: "activate", commands: [["activate", "demo", "v2"]],
            settled: [("event=agent-ready ", 1, "event=content-activated ")]),
        Operation(
            name: "activate and promote", commands: [["activate", "demo", "v2"], ["promote", "demo", "v2"]],
            settled: [("event=content-promoted ", 1, nil), ("event=agent-ready ", 1, "event=content-activated ")]),
        Operation(
            name: "activate and roll back", commands: [["activate", "demo", "v2"], ["rollback", "demo"]],
            settled: [("event=agent-ready ", 1, "event=rollback ")]),
        Operation(
            name: "activate bad content: crash loop, quarantine, rollback", commands: [["activate", "demo", "v3"]],
            settled: [("event=agent-ready ", 1, "event=content-quarantined ")]),
        Operation(
            name: "release", commands: [["release", "demo", "v0"]],
            settled: [("event=content-released ", 1, nil)]),
    ]

    /// Runs `operation`'s commands; stops at the first that fails (the daemon died).
    /// - Returns: the versions whose staging was confirmed.
    func run(_ operation: Operation, _ fixture: CrashFixture) throws -> Set<String> {
        var confirmed = Set<String>()
        for command in operation.commands {
            let arguments = command.map { $0 == "BUNDLE" ? fixture.bundle : $0 }
            let result = try Command.run(Paths.binary("backstopctl"), arguments + ["--config", fixture.harness.configPath])
            guard result.status == 0 else { break }
            if command.first == "stage", let index = command.firstIndex(of: "--version") { confirmed.insert(command[index + 1]) }
        }
        return confirmed
    }

    @Test(
        "killed at every durable step of an operation, the daemon comes back to a complete, verified store that agrees with its state",
        arguments: operations)
    func killAtEveryStep(_ operation: Operation) throws {
        let fixture = try CrashFixture()
        defer { fixture.harness.cleanUp() }
        let harness = fixture.harness

        // Count the steps of the operation and of what it sets off.
        try harness.start(environment: [FaultInjection.variable: "0"])
        try harness.wait(for: "agent-ready")
        #expect(try run(operation, fixture) == operation.staged)
        for (text, count, after) in operation.settled { try harness.log.wait(for: text, count: count, after: after, seconds: 60) }
        let steps = harness.log.all.filter { $0.hasPrefix("backstopd: durable step ") }
        harness.stop()
        #expect(steps.count > 3)
        print("\(operation.name): \(steps.count) durable steps")

        // Events that race (a READY datagram and the start it belongs to) can save an
        // unchanged state or not, so a run may make a few steps fewer than the count.
        var reached = 0
        for step in 1...steps.count {
            try fixture.reset()
            try harness.start(environment: [FaultInjection.variable: String(step)])
            try harness.wait(for: "agent-ready")
            let confirmed = try run(operation, fixture)
            let marker = "backstopd: durable step \(step): "
            try harness.log.wait("step \(step) or the end of the operation", seconds: 60) { lines in
                lines.contains { $0.hasPrefix(marker) } || operation.isSettled(lines)
            }
            if harness.log.all.contains(where: { $0.hasPrefix(marker) }) {
                #expect(harness.waitForExit(seconds: 30), "backstopd went on after step \(step)")
                reached += 1
            }
            let before = harness.log.all
            harness.killDaemon()
            let atKill = fixture.quarantineMarkProblems(exactly: false)
            try harness.start()
            harness.stop()
            let removed = CrashFixture.removedVersions(in: before + harness.log.all)
            let problems = fixture.invariantProblems(confirmedStaged: confirmed, removedSaid: removed)
                + atKill.map { "at the kill: \($0)" } + fixture.quarantineMarkProblems(exactly: true)
            #expect(problems.isEmpty, "killed at step \(step): \(steps[step - 1]): \(problems)")
            if !problems.isEmpty { break }
        }
        print("\(operation.name): killed at \(reached) of \(steps.count) steps\(reached < steps.count ? "; the other runs made fewer steps" : "")")
        #expect(reached * 4 >= steps.count * 3, "fault injection fired at only \(reached) of \(steps.count) steps")
    }

    @Test("200 SIGKILLs at random instants of random operations, one store throughout: the invariants hold after each restart")
    func randomKills() throws {
        let fixture = try CrashFixture()
        defer { fixture.harness.cleanUp() }
        let harness = fixture.harness
        let seed = ProcessInfo.processInfo.environment["BACKSTOP_CRASH_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64(UInt32.max))
        print("random kills: seed \(seed) (BACKSTOP_CRASH_SEED=\(seed) repeats the run)")
        var random = SplitMix64(seed: seed)
        var confirmed = Set<String>()
        var removed = Set<String>()
        var tally = (startup: 0, interrupted: 0, completed: 0)
        try fixture.reset()
        for run in 0..<200 {
            let versions = ["v0", "v1", "v2", "v3"] + confirmed.sorted()
            let pick = versions[Int(random.next() % UInt64(versions.count))]
            let fresh = "r\(run)"
            let command: [String]
            switch random.next() % 7 {
            case 0: command = ["stage", "demo", Paths.sample("v3-good"), "--version", fresh]
            case 1: command = ["stage", "demo", fixture.bundle, "--version", fresh, "--activate"]
            case 2: command = ["stage", "demo", Paths.sample("v2-channel-291"), "--version", fresh, "--activate"]
            case 3: command = ["activate", "demo", pick]
            case 4: command = ["promote", "demo", pick]
            case 5: command = ["rollback", "demo"]
            default: command = ["release", "demo", pick]
            }
            let delayMicroseconds = UInt32(random.next() % 300_000)

            let started = DispatchTime.now()
            try harness.start(waitUntilRunning: false)
            let budget = Double(delayMicroseconds) / 1_000_000
            var client: Process?
            if (try? harness.log.wait(for: "is running", seconds: budget)) != nil {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: Paths.binary("backstopctl"))
                process.arguments = command + ["--config", harness.configPath]
                process.standardOutput = FileHandle.nullDevice
                process.standardError = FileHandle.nullDevice
                try process.run()
                client = process
            }
            let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1000
            // The random instant is the point of this test, not a wait for something.
            if Double(delayMicroseconds) > elapsed { usleep(UInt32(Double(delayMicroseconds) - elapsed)) }
            harness.killDaemon()
            client?.waitUntilExit()
            if client?.terminationStatus == 0, command.first == "stage" { confirmed.insert(fresh) }
            switch client?.terminationStatus {
            case nil: tally.startup += 1
            case 0: tally.completed += 1
            default: tally.interrupted += 1
            }
            let before = harness.log.all
            let atKill = fixture.quarantineMarkProblems(exactly: false)

            try harness.start()
            harness.stop()
            removed.formUnion(CrashFixture.removedVersions(in: before + harness.log.all))
            let problems = fixture.invariantProblems(confirmedStaged: confirmed, removedSaid: removed)
                + atKill.map { "at the kill: \($0)" } + fixture.quarantineMarkProblems(exactly: true)
            if !problems.isEmpty { print((before + harness.log.all).joined(separator: "\n")) }
            #expect(problems.isEmpty, "run \(run) (seed \(seed)): \(command.joined(separator: " ")) killed after \(delayMicroseconds) µs: \(problems)")
            if !problems.isEmpty { break }
        }
        print("random kills: \(tally.startup) during startup recovery, \(tally.interrupted) with the request cut off, \(tally.completed) after the request was answered")
    }
}

/// A small seeded generator (SplitMix64), so that a run can be repeated from its seed.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
