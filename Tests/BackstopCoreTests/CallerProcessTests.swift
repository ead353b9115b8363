import Foundation
import Testing
@testable import BackstopCore

/// How a control client's process is read: its unit from /proc/PID/cgroup, the agent of a
/// transient scope, and the process at the other end of a real socket.
struct CallerProcessTests {
    @Test("The unit is the first component of the cgroup path that is not a slice, from the unified hierarchy or else systemd's own")
    func unitOfCgroupPath() {
        #expect(CallerProcess.unit(cgroupFile: "0::/system.slice/clamav-daemon.service\n") == "clamav-daemon.service")
        #expect(CallerProcess.unit(cgroupFile: "0::/system.slice/backstopd.service/sub\n") == "backstopd.service")
        #expect(CallerProcess.unit(cgroupFile: "0::/system.slice/backstop-demo-4242.scope\n") == "backstop-demo-4242.scope")
        // A user's own units are below user@UID.service: the system unit is that.
        #expect(CallerProcess.unit(cgroupFile: "0::/user.slice/user-1000.slice/user@1000.service/app.slice/clamav-daemon.service\n")
            == "user@1000.service")
        #expect(CallerProcess.unit(cgroupFile: "12:memory:/x\n1:name=systemd:/system.slice/demo-agent.service\n0::/\n") == "demo-agent.service")
        #expect(CallerProcess.unit(cgroupFile: "0::/\n") == nil)
        #expect(CallerProcess.unit(cgroupFile: "0::/../../machine.slice\n") == nil)
        #expect(CallerProcess.unit(cgroupFile: "4:memory:/process_api/7ffb\n0::/\n") == nil)
    }

    @Test("A transient scope backstop-<agent>-<pid>.scope names its agent, also one whose name has dashes")
    func scopeAgent() {
        #expect(Supervisor.scopeAgent("backstop-demo-4242.scope") == "demo")
        #expect(Supervisor.scopeAgent("backstop-edr-sensor-17.scope") == "edr-sensor")
        #expect(Supervisor.scopeAgent("backstop-demo.service") == nil)
        #expect(Supervisor.scopeAgent("backstop-demo-x1.scope") == nil)
        #expect(Supervisor.scopeAgent("backstop--1.scope") == nil)
        #expect(Supervisor.scopeAgent("session-3.scope") == nil)
    }

    @Test("The process at the other end of a socket is read while it lives, with its session and ancestors")
    func identifiesLivePeer() throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        defer { pair.forEach { close($0) } }
        let credentials = try PeerCredentials.of(socket: pair[0])
        guard case .identified(let caller) = CallerProcess.identify(socket: pair[0], pid: credentials.pid) else {
            Issue.record("this process was not identified")
            return
        }
        #expect(caller.pid == getpid())
        #expect(caller.session == getsid(0))
        #expect(caller.ancestors.first == getppid() || getppid() == 1)
        #expect(CallerProcess.identify(socket: pair[0], pid: 0) != .identified(caller), "a pid outside the namespace is not identified")
    }
}
