import Foundation
import Testing
@testable import BackstopCore

@Suite("Termination")
struct TerminationTests {
    @Test("wait statuses decode to exit codes, signals and the core-dump bit", arguments: [
        (Int32(0x0300), Termination.exited(code: 3)),
        (Int32(0x0000), Termination.exited(code: 0)),
        (Int32(0x000B), Termination.signaled(signal: SIGSEGV, coreDumped: false)),
        (Int32(0x008B), Termination.signaled(signal: SIGSEGV, coreDumped: true)),
        (Int32(0x0009), Termination.signaled(signal: SIGKILL, coreDumped: false)),
    ])
    func waitStatus(status: Int32, expected: Termination) {
        #expect(Termination(waitStatus: status) == expected)
    }

    @Test("the description says when a core was dumped")
    func description() {
        #expect(Termination.signaled(signal: SIGSEGV, coreDumped: true).description == "signal SIGSEGV (core dumped)")
        #expect(Termination.signaled(signal: SIGSEGV, coreDumped: nil).description == "signal SIGSEGV")
        #expect(Termination.exited(code: 3).description == "exit code 3")
    }
}
