import Foundation
import Testing
@testable import BackstopCore

@Suite("A unit's end as systemd reports it")
struct UnitStateTests {
    func ended(result: String, code: Int32, status: Int32) -> UnitState {
        UnitState(activeState: "failed", subState: "failed", result: result, mainPID: 0, execMainCode: code, execMainStatus: status)
    }

    @Test("Exit statuses 200 to 243 and Result=resources are systemd failing to set the unit up; the program's own exits are not")
    func setUpFailures() {
        for status: Int32 in [200, 203, 217, 226, 243] {
            #expect(ended(result: "exit-code", code: 1, status: status).setUpFailure != nil, "\(status)")
        }
        #expect(ended(result: "resources", code: 0, status: 0).setUpFailure != nil)
        for status: Int32 in [1, 2, 127, 199, 244] {
            #expect(ended(result: "exit-code", code: 1, status: status).setUpFailure == nil, "\(status)")
        }
        #expect(ended(result: "signal", code: 2, status: 217).setUpFailure == nil, "signal 217 is no exit status")
    }

    func command(_ setting: String, _ termination: Termination, endedAt microseconds: UInt64) -> UnitCommandEnd {
        UnitCommandEnd(setting: setting, path: "/bin/sh", termination: termination, exitMonotonicMicroseconds: microseconds)
    }

    @Test("A unit that failed before its main process ran ends with its failing command's status, never a clean exit")
    func failedBeforeTheMainProcess() {
        // An ExecStartPre= that exited 1: systemd says Result=exit-code, ExecMainCode=0.
        var state = ended(result: "exit-code", code: 0, status: 0)
        #expect(state.termination == nil)
        state.failedCommand = command("ExecStartPre", .exited(code: 1), endedAt: 10)
        #expect(state.termination == .exited(code: 1))
        #expect(state.setUpFailure == nil)
        let reason = FailureReason.classify(state.termination!, oomKilled: false, survivorsRemain: false)
        #expect(reason == .exited && reason.attribution(cleanExitIsFailure: false) == .content)

        // Killed at systemd's start timeout, or dumped core.
        state.failedCommand = command("ExecStart", .signaled(signal: SIGTERM, coreDumped: false), endedAt: 10)
        #expect(state.termination == .signaled(signal: SIGTERM, coreDumped: false))
        state.failedCommand = command("ExecStartPost", .signaled(signal: SIGSEGV, coreDumped: true), endedAt: 10)
        #expect(FailureReason.classify(state.termination!, oomKilled: false, survivorsRemain: false) == .crashed)

        // systemd's own exit codes from a command are a set-up failure, as from the main process.
        state.failedCommand = command("ExecStartPre", .exited(code: 203), endedAt: 10)
        #expect(state.setUpFailure?.contains("ExecStartPre=") == true)

        // An ExecStartPost= that failed a simple unit: systemd then stopped its main process.
        let post = UnitState(
            activeState: "failed", subState: "failed", result: "exit-code", mainPID: 0, execMainCode: 2, execMainStatus: SIGTERM,
            failedCommand: command("ExecStartPost", .exited(code: 1), endedAt: 10))
        #expect(post.termination == .exited(code: 1))
        #expect(ended(result: "signal", code: 2, status: SIGSEGV).termination == .signaled(signal: SIGSEGV, coreDumped: false))
    }

    @Test("Of a unit's start commands, the first to end unsuccessfully failed the start; clean exits are no failure")
    func failingCommand() {
        // A forking unit: ExecStartPre= passed, then the start process exited 1.
        let forking = [command("ExecStartPre", .exited(code: 0), endedAt: 5), command("ExecStart", .exited(code: 1), endedAt: 9)]
        #expect(UnitCommandEnd.failing(forking)?.setting == "ExecStart")
        #expect(UnitCommandEnd.failing([command("ExecStartPre", .exited(code: 0), endedAt: 5)]) == nil)
        #expect(UnitCommandEnd.failing([]) == nil)
        // The main process killed by the stop after a failing ExecStartPost=: the post command ended first.
        let post = [command("ExecStart", .signaled(signal: SIGTERM, coreDumped: false), endedAt: 20), command("ExecStartPost", .exited(code: 2), endedAt: 12)]
        #expect(UnitCommandEnd.failing(post)?.setting == "ExecStartPost")
    }
}
