import Foundation
import Testing

/// A real kernel panic: Debian 12 in a virtual machine (QEMU; KVM where it boots Debian's
/// kernel, software emulation otherwise), booted directly with `panic=1`, with Backstop
/// installed as a service from the `make install` tree, and an agent whose bad content
/// crashes the kernel (`echo c > /proc/sysrq-trigger`) shortly after it starts, on every
/// boot. scripts/vm/run-scenario.sh boots it until the guest reports `backstopctl status
/// --json`, `boots --json` and `history --json` after the loop (or after its last boot).
@Suite(
    .serialized, .timeLimit(.minutes(12)),
    .enabled(if: VirtualMachine.available,
             "needs root, qemu-system-x86_64, mmdebstrap and an install tree in BACKSTOP_INSTALL_DIR (`make test` provides all)"))
struct VirtualMachineTests {
    /// content-panic: known-good `good`, then `bad` activated; the agent crashes the kernel
    /// two seconds after it starts on it. By boot 3 backstopd has rolled back to `good`
    /// before the agent started, and the crashed boots' decisions are in the journal.
    @Test func contentThatCrashesTheKernelIsRolledBackByBootThree() throws {
        let run = try VirtualMachine.run(scenario: "content-panic")
        try run.expectLoopBroken()
        // The crashed boots' decisions survived the panics: the activation and the start on it.
        let crashed = run.history.filter { $0["_BOOT_ID"] != run.finalBootID }
        #expect(crashed.contains { $0["BACKSTOP_EVENT"] == "content-activated" && $0["BACKSTOP_CONTENT_VERSION"] == "bad" },
                "history: \(run.historyText)")
        #expect(crashed.contains { $0["BACKSTOP_EVENT"] == "agent-started" && $0["BACKSTOP_CONTENT_VERSION"] == "bad" },
                "history: \(run.historyText)")
    }

    /// preflight-panic: activating `bad` runs its preflight, which crashes the kernel, and it
    /// is activated again at every boot. The crashed boots count against `bad`, never
    /// against the known-good version, which keeps running.
    @Test func contentWhosePreflightCrashesTheKernelIsQuarantined() throws {
        let run = try VirtualMachine.run(scenario: "preflight-panic")
        try run.expectLoopBroken()
        #expect(!run.history.contains { $0["BACKSTOP_EVENT"] == "gave-up" || $0["BACKSTOP_EVENT"] == "safe-mode" },
                "history: \(run.historyText)")
    }

    /// after-promotion: `bad` is activated and promoted at once; the agent crashes the kernel
    /// 20 s after it starts. The boots that fail after the promotion, before boot-good, count
    /// against the content the agent was started on, promoted in the first of them: by boot 3
    /// it is quarantined and rolled back to `good` before the agent starts.
    @Test func bootsThatFailAfterAPromotionCount() throws {
        let run = try VirtualMachine.run(scenario: "after-promotion")
        try run.expectLoopBroken()
        let final = run.history.filter { $0["_BOOT_ID"] == run.finalBootID && $0["BACKSTOP_AGENT"] == "sensor" }
        #expect(final.contains { $0["BACKSTOP_EVENT"] == "boot-assessed" && $0["BACKSTOP_REASON"] == "boot-loop" && $0["BACKSTOP_CONTENT_VERSION"] == "bad" },
                "history: \(run.historyText)")
        #expect(final.contains { $0["BACKSTOP_EVENT"] == "rollback" && $0["BACKSTOP_REASON"] == "boot-loop" && $0["BACKSTOP_CONTENT_VERSION"] == "good" },
                "history: \(run.historyText)")
    }
}

/// One run of scripts/vm/run-scenario.sh and what the guest reported.
struct VirtualMachine {
    static let installTree = ProcessInfo.processInfo.environment["BACKSTOP_INSTALL_DIR"]

    static var available: Bool {
        Environment.isRoot
            && ["/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-img", "/usr/bin/mmdebstrap"].allSatisfy(FileManager.default.isExecutableFile)
            && installTree.map { FileManager.default.isExecutableFile(atPath: $0 + "/usr/sbin/backstopd") } == true
    }

    /// Where the consoles of each boot and the results are kept for a failure's reader:
    /// `consoles/<scenario>` in the image cache (`BACKSTOP_VM_CACHE`, default .build-vm),
    /// replaced by the scenario's next run, so nothing piles up in /tmp.
    let directory: String
    /// The boot in which the guest reported, from 1.
    let finalBoot: Int
    let status: [String: Any]
    let boots: [String: Any]
    let history: [[String: String]]
    let historyText: String

    var agent: [String: Any] { (status["agents"] as? [[String: Any]])?.first ?? [:] }
    var content: [String: Any] { agent["content"] as? [String: Any] ?? [:] }
    var finalBootID: String { (status["boot"] as? [String: Any])?["id"] as? String ?? "" }

    /// Boots the machine through `scenario` (see scripts/vm/guest/run.sh), at most three boots.
    /// - Throws: when the script fails (its output in the error) or a section is not JSON.
    static func run(scenario: String) throws -> VirtualMachine {
        let cache = ProcessInfo.processInfo.environment["BACKSTOP_VM_CACHE"] ?? Paths.repository + "/.build-vm"
        let directory = cache + "/consoles/" + scenario
        try? FileManager.default.removeItem(atPath: directory)
        let started = Date()
        let result = try Command.run(Paths.repository + "/scripts/vm/run-scenario.sh", [installTree!, scenario, directory, "3"])
        print("VM scenario \(scenario): \(Int(Date().timeIntervalSince(started))) s\n\(result.error)")
        guard result.status == 0 else {
            throw VirtualMachineError(message: "run-scenario.sh \(scenario) exited \(result.status): \(result.error) (consoles in \(directory))")
        }
        var sections: [String: [String]] = [:]
        var finalBoot = 0
        var current = ""
        let text = try String(contentsOfFile: directory + "/results.log", encoding: .utf8)
        // The serial port ends lines with CR LF, one Character in Swift.
        for line in text.split(whereSeparator: \.isNewline).map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if line.hasPrefix("vm-result ") {
                let words = line.split(separator: " ")
                current = String(words[1])
                if current == "boot", words.count > 2 { finalBoot = Int(words[2]) ?? 0 }
                continue
            }
            sections[current, default: []].append(line)
        }
        func object(_ lines: [String]?) throws -> [String: Any] {
            let data = Data((lines ?? []).joined(separator: "\n").utf8)
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw VirtualMachineError(message: "not a JSON object: \((lines ?? []).joined(separator: "\n"))")
            }
            return object
        }
        let history = (sections["history"] ?? []).compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: String]
        }
        return VirtualMachine(
            directory: directory, finalBoot: finalBoot, status: try object(sections["status"]), boots: try object(sections["boots"]),
            history: history, historyText: (sections["history"] ?? []).joined(separator: "\n"))
    }

    /// By boot 3 the agent runs on `good` again and `bad` is quarantined; in that boot the
    /// rollback came before the agent started, and the agent never started on `bad`; the
    /// state read back after real panics is whole.
    func expectLoopBroken() throws {
        #expect(finalBoot >= 2 && finalBoot <= 3, "reported in boot \(finalBoot); consoles in \(directory)")
        #expect(agent["state"] as? String == "running", "status: \(status)")
        #expect(content["active"] as? String == "good", "status: \(status)")
        #expect(content["known_good"] as? String == "good", "status: \(status)")
        #expect(content["candidate"] == nil || content["candidate"] is NSNull, "status: \(status)")
        #expect((content["quarantined"] as? [String]) == ["bad"], "status: \(status)")
        let final = history.filter { $0["_BOOT_ID"] == finalBootID && $0["BACKSTOP_AGENT"] == "sensor" }
        #expect(!final.contains { $0["BACKSTOP_EVENT"] == "agent-started" && $0["BACKSTOP_CONTENT_VERSION"] == "bad" },
                "history: \(historyText)")
        let startedOnGood = final.firstIndex { $0["BACKSTOP_EVENT"] == "agent-started" && $0["BACKSTOP_CONTENT_VERSION"] == "good" }
        let quarantined = history.firstIndex { $0["BACKSTOP_EVENT"] == "content-quarantined" && $0["BACKSTOP_CONTENT_VERSION"] == "bad" }
        #expect(startedOnGood != nil && quarantined != nil, "history: \(historyText)")
    }
}

struct VirtualMachineError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
