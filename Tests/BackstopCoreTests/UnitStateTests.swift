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
}
