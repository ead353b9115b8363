import Foundation
import Testing
@testable import BackstopCore

/// Each test pins down a defect found once, so that it stays fixed.
@Suite("Regressions")
struct RegressionTests {
    @Test("a new candidate's probation is not credited with the previous version's healthy run")
    func probationStartsAfresh() throws {
        var policy = AgentPolicy(
            settings: policySettings(probationSeconds: 600),
            ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        policy.startAndBecomeReady(at: 0)  // v1 ready at 1
        _ = try policy.activate("v2", at: moment(1001))
        #expect(policy.probationBankedSeconds == 0)
        let restart = policy.handle(.agentExited(.exited(code: 0)), at: moment(1001.5))
        #expect(restart.contains(.spawn(version: "v2", mode: .normal)))
        let ready = policy.startAndBecomeReady(at: 1002)  // v2 ready at 1003
        #expect(ready.deadline(of: .probation) == 1603)
    }

    @Test("failures of the version that ran before an activation do not count against the new candidate")
    func failuresBelongToTheirVersion() throws {
        var policy = AgentPolicy(
            settings: policySettings(threshold: 3),
            ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        policy.startAndCrash(at: 1)
        policy.fireRestart()
        policy.startAndCrash(at: 3)
        #expect(policy.escalationState.failures.count == 2)
        let activation = try policy.activate("v2", at: moment(5))
        #expect(activation.contains(.spawn(version: "v2", mode: .normal)))
        #expect(policy.escalationState.failures.isEmpty)
        let crash = policy.startAndCrash(at: 6)
        #expect(crash.decision(.crashLoop) == nil)
        #expect(policy.phase == .backoff)
        #expect(policy.ledger.candidate == "v2")
    }

    @Test("a first version that crash-loops stays active and is restarted: without a comparison it is not quarantined")
    func firstVersionIsNotLeftActive() throws {
        var policy = AgentPolicy(settings: policySettings(threshold: 2), ledger: makeLedger(staged: ["v1"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        let (actions, _) = policy.crashUntilCrashLoop(from: 0)
        #expect(!actions.contains(.switchContent(version: nil)))
        #expect(policy.ledger.active == "v1")
        #expect(policy.ledger.quarantined.isEmpty)
        #expect(policy.phase.isStarting)
    }

    @Test("a symlink whose target walks through another link is refused even when the target does not exist yet")
    func danglingEscapeThroughLinkRefused() throws {
        let root = try makeTemporaryDirectory()
        defer { ContentStore.removeTree(root) }
        let source = root + "/source"
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        try write("rule", to: source + "/rules.conf")
        #expect(symlink(".", source + "/s") == 0)
        let target = String(repeating: "s/", count: 5) + String(repeating: "../", count: 5) + "planted-later"
        #expect(symlink(target, source + "/x") == 0)
        let store = ContentStore(stateDirectory: root + "/state", agent: "demo")
        #expect(throws: StoreError.symlinkEscapes(path: source + "/x", target: target)) {
            _ = try stage(source, into: store, id: "v1", at: Date())
        }
        #expect(names(in: store.versionsDirectory).isEmpty)
    }

    @Test("errors in a file with CRLF line ends still name the line")
    func crlfLines() throws {
        let text = "[daemon]\r\nstate_directory = \"/var/lib/backstop\"\r\n\r\n[[agent]]\r\nname = \"demo\"\r\nexec = [\"/bin/true\"]\r\nfailure_threshold = 0\r\n"
        #expect(throws: ConfigurationError(
            path: "/x.toml", line: 7, key: "agent[0].failure_threshold", message: "must be greater than zero, not 0")) {
            _ = try Configuration.parse(text, path: "/x.toml")
        }
    }
}

@Suite("Exec failures")
struct ExecFailureTests {
    @Test("a program that cannot be executed is retried with backoff and its content is never quarantined")
    func execFailuresDoNotBlameContent() throws {
        var policy = AgentPolicy(
            settings: policySettings(threshold: 3), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v2"))
        _ = policy.handle(.begin(), at: moment(0))
        for attempt in 0..<6 {
            let actions = policy.handle(.spawnFailed("/opt/agent: no such executable"), at: moment(Double(attempt)))
            #expect(actions.decision(.crashLoop) == nil)
            #expect(policy.phase == .backoff)
            #expect(policy.isDegraded)
            policy.fireRestart()
        }
        #expect(policy.escalationState.failures.count == 6)
        #expect(policy.ledger.quarantined.isEmpty)
        #expect(policy.ledger.candidate == "v2")
    }
}

@Suite("Operator requests that make no sense")
struct OperatorRequestTests {
    func policy() -> AgentPolicy {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        return policy
    }

    @Test("rolling back to the version already active is refused")
    func rollbackToActive() {
        var policy = policy()
        #expect(throws: PolicyError.noKnownGood) { _ = try policy.rollback(to: nil, at: moment(1)) }
        #expect(throws: PolicyError.alreadyActive("v1")) { _ = try policy.rollback(to: "v1", at: moment(1)) }
        #expect(policy.lastRollback == nil)
    }

    @Test("a rollback only returns to known-good content")
    func rollbackToUntested() {
        var policy = policy()
        #expect(throws: PolicyError.notKnownGood("v2")) { _ = try policy.rollback(to: "v2", at: moment(1)) }
        #expect(policy.ledger.active == "v1")
    }

    @Test("releasing a version that is not quarantined is refused")
    func releaseNotQuarantined() {
        var policy = policy()
        #expect(throws: PolicyError.notQuarantined("v2")) { _ = try policy.release("v2") }
    }
}

@Suite("Configuration limits")
struct ConfigurationLimitTests {
    @Test("a runtime_directory too long for a Unix socket path is refused with its line")
    func socketPathTooLong() {
        let directory = "/run/" + String(repeating: "x", count: 100)
        let text = "[daemon]\nruntime_directory = \"\(directory)\"\n"
        #expect {
            _ = try Configuration.parse(text, path: "/x.toml")
        } throws: { error in
            (error as? ConfigurationError)?.description.hasPrefix("/x.toml:2: daemon.runtime_directory: too long") == true
        }
    }

    @Test("a content_link inside the state directory is refused")
    func contentLinkInsideStore() {
        let text = """
            [[agent]]
            name = "demo"
            exec = ["/bin/true"]
            content_link = "/var/lib/backstop/demo/active"
            """
        #expect {
            _ = try Configuration.parse(text, path: "/x.toml")
        } throws: { error in
            (error as? ConfigurationError)?.description.hasPrefix("/x.toml:4: agent[0].content_link: must not be inside state_directory") == true
        }
    }

    @Test("a directory given as the configuration file is named as such")
    func directoryAsFile() throws {
        let directory = try makeTemporaryDirectory()
        defer { ContentStore.removeTree(directory) }
        #expect(throws: ConfigurationError(path: directory, line: nil, key: nil, message: "is a directory, not a configuration file")) {
            _ = try Configuration.load(path: directory)
        }
    }

    @Test("check-config warns about a program that is not there and about no agents")
    func warnings() throws {
        let configuration = try Configuration.parse("[[agent]]\nname = \"a\"\nexec = [\"/nonexistent/agent\"]\n", path: "/x.toml")
        #expect(configuration.warnings == ["agent a: exec: /nonexistent/agent is not an executable file (yet); starts will fail until it is"])
        #expect(try Configuration.parse("", path: "/x.toml").warnings.count == 1)
    }

    @Test("check-config warns about what the sandbox would leave out: a writable path that does not exist, the rest of the file system left writable")
    func sandboxWarnings() throws {
        let configuration = try Configuration.parse("""
            [[agent]]
            name = "a"
            exec = ["/bin/true"]
            [agent.sandbox]
            read_only_paths = ["/usr"]
            read_write_paths = ["/nonexistent/state"]
            """, path: "/x.toml")
        let warnings = configuration.warnings
        #expect(warnings.contains("agent a: sandbox: read_write_paths not applied: /nonexistent/state: does not exist; the agent will not start until it does"), "\(warnings)")
        #expect(warnings.contains { $0.hasPrefix("agent a: sandbox: read_only_paths not applied: / is not among them") }, "\(warnings)")
    }
}

@Suite("Escalation with damaged content")
struct DamagedEscalationTests {
    @Test("when the older known-good version is damaged, the ladder does not return to the one that crash-loops")
    func noReturnToFailingKnownGood() throws {
        var policy = AgentPolicy(
            settings: policySettings(threshold: 2), ledger: makeLedger(knownGood: ["v1", "v3"], active: "v3"))
        _ = policy.handle(.begin(), at: moment(0))
        let (actions, end) = policy.crashUntilCrashLoop(from: 0)
        #expect(actions.contains(.switchContent(version: "v1")))
        // The host finds v1's files changed when it is about to switch.
        let corrupt = policy.handle(.activeContentCorrupt("digest mismatch"), at: moment(end))
        #expect(!corrupt.contains(.switchContent(version: "v3")))
        #expect(!corrupt.contains(.spawn(version: "v3", mode: .normal)))
        #expect(corrupt.decision(.safeMode)?.reason == "no-known-good")
        #expect(policy.phase == .givenUp)
        #expect(policy.ledger.quarantined == ["v1"])
    }
}
