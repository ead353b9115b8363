import CLinux
import Foundation
import SystemPackage
import Testing
@testable import BackstopCore

@Suite("Starting processes: clone3 with a pidfd, the child set up before its exec")
struct SpawnerTests {
    /// A pipe whose read end collects what a child writes to the write end.
    struct Capture {
        let readEnd: Int32
        let writeEnd: Int32

        init() throws {
            var ends: [Int32] = [0, 0]
            guard backstop_pipe_cloexec(&ends) == 0 else { throw Errno(rawValue: errno) }
            (readEnd, writeEnd) = (ends[0], ends[1])
        }

        /// Closes the write end and reads to the end of the pipe.
        func text() -> String {
            close(writeEnd)
            defer { close(readEnd) }
            var data: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = read(readEnd, &buffer, buffer.count)
                if count < 0, errno == EINTR { continue }
                guard count > 0 else { return String(decoding: data, as: UTF8.self) }
                data += buffer[..<count]
            }
        }
    }

    /// Runs `script` with /bin/sh, descriptors `descriptors`, and returns how it ended.
    func run(_ script: String, descriptors: [Int32], groupID: gid_t? = nil) async throws -> Termination {
        let process = try await Spawner.spawn("/bin/sh", arguments: ["sh", "-c", script], environment: ["PATH": "/usr/bin:/bin"],
                                        descriptors: descriptors, groupID: groupID)
        return await ProcessExits.shared.termination(of: process)
    }

    @Test("A program that cannot be executed comes back as the exec step's errno, and nothing is left running")
    func execFailure() async throws {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        await #expect(throws: SpawnError(step: .exec, errno: .noSuchFileOrDirectory)) {
            try await Spawner.spawn("/nonexistent/program", arguments: ["program"], environment: [:], descriptors: [null, null, null])
        }
        // A regular file without execute permission.
        await #expect(throws: SpawnError(step: .exec, errno: .permissionDenied)) {
            try await Spawner.spawn("/etc/passwd", arguments: ["passwd"], environment: [:], descriptors: [null, null, null])
        }
        #expect(SpawnError(step: .exec, errno: .permissionDenied).description == "execve: Permission denied")
    }

    @Test("The exit is read from the pidfd: exit code, signal, core dump")
    func exitStatus() async throws {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        #expect(try await run("exit 7", descriptors: [null, null, null]) == .exited(code: 7))
        #expect(try await run("kill -KILL $$", descriptors: [null, null, null]) == .signaled(signal: SIGKILL, coreDumped: false))
        // Many at once: each is told apart by its own pidfd.
        let codes = try await withThrowingTaskGroup(of: Termination.self) { group in
            for code in 0..<20 { group.addTask { try await self.run("exit \(code)", descriptors: [null, null, null]) } }
            return try await group.reduce(into: Set<Int32>()) { $0.insert($1.exitStatus ?? -1) }
        }
        #expect(codes == Set(0..<20))
    }

    @Test("A wait with a time limit ends at the process's end, or at the limit when the process runs on")
    func timedWait() async throws {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let quick = try await Spawner.spawn("/bin/sh", arguments: ["sh", "-c", "exit 3"], environment: [:], descriptors: [null, null, null])
        #expect(await ProcessExits.shared.readable(quick.pidfd, timeoutSeconds: 60))
        #expect(await ProcessExits.shared.termination(of: quick) == .exited(code: 3))
        let slow = try await Spawner.spawn("/bin/sleep", arguments: ["sleep", "60"], environment: [:], descriptors: [null, null, null])
        let before = ContinuousClock.now
        #expect(await !ProcessExits.shared.readable(slow.pidfd, timeoutSeconds: 0.2))
        #expect(ContinuousClock.now - before >= .milliseconds(200))
        kill(slow.pid, SIGKILL)
        #expect(await ProcessExits.shared.termination(of: slow) == .signaled(signal: SIGKILL, coreDumped: false))
    }

    @Test("The descriptors are the child's 0, 1, 2, 3 as given (one source twice), and no other descriptor of the parent's reaches it")
    func descriptors() async throws {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let output = try Capture()
        // Inherited by any child that does not close it: the spawner must.
        let leaked = open("/dev/null", O_RDONLY)
        defer { close(leaked) }
        #expect(leaked > 3)
        let termination = try await run(
            "echo out; echo three >&3; ls /proc/$$/fd; readlink /proc/$$/fd/0",
            descriptors: [null, output.writeEnd, null, output.writeEnd])
        #expect(termination == .exited(code: 0))
        let lines = output.text().split(separator: "\n").map(String.init)
        // ls lists the shell's descriptors: only the four mapped ones are open (ls's own
        // directory descriptor is in its own /proc entry, not the shell's).
        #expect(lines == ["out", "three", "0", "1", "2", "3", "/dev/null"])
    }

    @Test("The child leads a session of its own, with no signal blocked or ignored")
    func sessionAndSignals() async throws {
        let input = try Capture()
        let output = try Capture()
        // Read by the shell itself: while it waits for a child, sh blocks every signal.
        signal(SIGUSR2, SIG_IGN)
        defer { signal(SIGUSR2, SIG_DFL) }
        let process = try await Spawner.spawn(
            "/bin/sh", arguments: ["sh", "-c", "while read -r line; do case $line in SigBlk*|SigIgn*) echo \"$line\";; esac; done </proc/$$/status; read line || :"], environment: [:],
            descriptors: [input.readEnd, output.writeEnd, output.writeEnd])
        close(input.readEnd)
        #expect(getsid(process.pid) == process.pid)
        close(input.writeEnd)
        #expect(await ProcessExits.shared.termination(of: process) == .exited(code: 0))
        let status = output.text()
        #expect(status.contains("SigBlk:\t0000000000000000"), "\(status)")
        #expect(status.contains("SigIgn:\t0000000000000000"), "\(status)")
    }

    @Test("The child is in the given group alone: set by root, refused (the group step's EPERM) to anyone else")
    func group() async throws {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let output = try Capture()
        let group: gid_t = 2_147_483_646
        if getuid() != 0 {
            await #expect(throws: SpawnError(step: .group, errno: .notPermitted)) {
                try await Spawner.spawn("/bin/true", arguments: ["true"], environment: [:], descriptors: [null, null, null], groupID: group)
            }
            return
        }
        let termination = try await run("grep -E '^(Gid|Groups):' /proc/$$/status", descriptors: [null, output.writeEnd, null], groupID: group)
        #expect(termination == .exited(code: 0))
        let status = output.text()
        #expect(status.contains("Gid:\t\(group)\t\(group)\t\(group)\t\(group)\n"), "\(status)")
        #expect(status.split(separator: "\n").contains { $0.trimmingCharacters(in: .whitespaces) == "Groups:" }, "\(status)")
    }
}
