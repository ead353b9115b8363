import Foundation
import Testing
@testable import BackstopCore

@Suite("Journal fields")
struct JournalFieldTests {
    @Test("metadata keys become valid BACKSTOP_ field names", arguments: [
        ("agent", "BACKSTOP_AGENT"),
        ("peer-uid", "BACKSTOP_PEER_UID"),
        ("moved.to", "BACKSTOP_MOVED_TO"),
        ("unit", "BACKSTOP_UNIT"),
        ("ümlaut", "BACKSTOP__MLAUT"),
        (String(repeating: "k", count: 100), "BACKSTOP_" + String(repeating: "K", count: 55)),
    ])
    func fieldNames(key: String, field: String) {
        #expect(JournalLogHandler.fieldName(for: key) == field)
    }

    @Test("a decision's fields follow the contract and keep names on one line")
    func decisionFields() {
        let decision = Decision(
            .rollback, agent: "demo", version: "v1\nforged=1", previousVersion: "v2", reason: "crash-loop",
            message: "Rolled back.\nSecond line stays in MESSAGE.")
        let fields = Dictionary(decision.journalFields) { first, _ in first }
        #expect(fields["MESSAGE_ID"] == "f45054b21e1940789f715ad550c3679d")
        #expect(fields["PRIORITY"] == "4")
        #expect(fields["SYSLOG_IDENTIFIER"] == "backstopd")
        #expect(fields["BACKSTOP_EVENT"] == "rollback")
        #expect(fields["BACKSTOP_CONTENT_VERSION"] == "v1 forged=1")
        #expect(fields["BACKSTOP_PREVIOUS_VERSION"] == "v2")
        #expect(fields["MESSAGE"] == "Rolled back.\nSecond line stays in MESSAGE.")
        #expect(fields["UNIT"] == nil)
    }

    @Test("priorities fit the decision: a rollback warns, giving up is critical, a promotion is a notice")
    func priorities() {
        #expect(EventKind.rollback.priority == .warning)
        #expect(EventKind.gaveUp.priority == .critical)
        #expect(EventKind.contentPromoted.priority == .notice)
        let askedFor = Decision(.agentExited, agent: "demo", version: "v1", message: "stopped as asked")
        #expect(askedFor.priority == .info)
        let crashed = Decision(.agentExited, agent: "demo", version: "v1", reason: "crashed", message: "failed")
        #expect(crashed.priority == .warning)
        let clean = Decision(.agentExited, agent: "demo", version: "v1", reason: "clean-exit", message: "exited 0")
        #expect(clean.priority == .notice)
        let daemonized = Decision(.agentExited, agent: "demo", version: "v1", reason: "daemonized", message: "forked")
        #expect(daemonized.priority == .error)
    }

    @Test("every failure reason reaches the journal as BACKSTOP_REASON, with the signal by name", arguments: FailureReason.allCases)
    func reasonField(reason: FailureReason) {
        let decision = Decision(.agentExited, agent: "demo", version: "v1", signal: SIGKILL, reason: reason.rawValue, message: "ended")
        let fields = Dictionary(decision.journalFields) { first, _ in first }
        #expect(fields["BACKSTOP_REASON"] == reason.rawValue)
        #expect(fields["BACKSTOP_SIGNAL"] == "SIGKILL")
    }
}
