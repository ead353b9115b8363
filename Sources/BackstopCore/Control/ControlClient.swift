import Foundation
import SystemPackage

/// A blocking Varlink client of `io.backstop.Manager`, for `backstopctl`.
public struct ControlClient: Sendable {
    /// The control socket's path.
    public var path: String
    /// How long to wait for a reply, in seconds: long enough for staging a large tree,
    /// short for reading the status, so that a stopped daemon does not hang the caller.
    public var replyTimeoutSeconds: Int

    /// A client of the socket at `path` (`<runtime_directory>/io.backstop.Manager`); connects only when calling.
    public init(path: String, replyTimeoutSeconds: Int = 15) {
        self.path = path
        self.replyTimeoutSeconds = replyTimeoutSeconds
    }

    /// Why a call did not get a reply.
    public enum ClientError: Error, CustomStringConvertible {
        /// Nothing listens on the socket (ENOENT, ECONNREFUSED).
        case daemonNotRunning(path: String)
        /// The socket may not be opened by this user (root or group `backstop` only).
        case permissionDenied(path: String)
        /// Another socket error.
        case io(operation: String, errno: Int32)
        case protocolError(String)

        /// One sentence for `backstopctl` to print, with the socket path or errno text (strerror(3)).
        public var description: String {
            switch self {
            case .daemonNotRunning(let path): return "backstopd is not running (nothing listens on \(path))"
            case .permissionDenied(let path):
                let group = getgrnam("backstop") == nil
                    ? " (there is no group backstop on this host: `systemd-sysusers` creates it from backstop.sysusers)" : ""
                return "permission denied on \(path): talking to backstopd needs root or membership of group backstop\(group)"
            case .io(let operation, let errno): return "\(operation): \(String(cString: strerror(errno)))"
            case .protocolError(let message): return "bad reply from backstopd: \(message)"
            }
        }
    }

    /// Calls `io.backstop.Manager.<method>` and decodes the reply's parameters as `Reply`.
    /// - Parameter descriptors: sent with the call (``callRaw(_:_:sending:)``); the parameters name them by index.
    /// - Throws: ``ClientError``, ``Varlink/RemoteError`` for an error reply, or a `DecodingError`.
    public func call<Reply: Decodable>(
        _ method: String, _ parameters: some Encodable, sending descriptors: [FileDescriptor] = [], as: Reply.Type
    ) throws -> Reply {
        let data = try callRaw(ManagerInterface.name + "." + method, parameters, sending: descriptors)
        return try JSONDecoder.backstop.decode(Reply.self, from: data)
    }

    /// Calls a method that returns nothing.
    /// - Throws: as ``call(_:_:sending:as:)``.
    public func call(_ method: String, _ parameters: some Encodable) throws {
        _ = try callRaw(ManagerInterface.name + "." + method, parameters)
    }

    /// Sends one call and returns the reply's parameters as JSON.
    /// - Parameter descriptors: open descriptors sent with the call's first bytes as one
    ///   `SCM_RIGHTS` control message (sendmsg(2), unix(7)); the caller keeps and closes its own.
    /// - Throws: as ``call(_:_:sending:as:)``.
    public func callRaw(_ qualifiedMethod: String, _ parameters: some Encodable, sending descriptors: [FileDescriptor] = []) throws -> Data {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError.io(operation: "socket", errno: errno) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: replyTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let connected = try UnixSocketAddress.withAddress(path) { address, length in connect(fd, address, length) }
        guard connected == 0 else {
            if errno == ENOENT || errno == ECONNREFUSED { throw ClientError.daemonNotRunning(path: path) }
            if errno == EACCES { throw ClientError.permissionDenied(path: path) }
            throw ClientError.io(operation: "connect to \(path)", errno: errno)
        }
        let message = try Varlink.Call.encode(method: qualifiedMethod, parameters: parameters)
        try message.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                // The descriptors go with the first bytes, so with the call they belong to.
                let pending = offset == 0 ? descriptors.map(\.rawValue) : []
                do throws(Errno) { offset += try DescriptorPassing.send(fd, UnsafeRawBufferPointer(rebasing: bytes[offset...]), descriptors: pending) } catch {
                    throw ClientError.io(operation: "send", errno: error.rawValue)
                }
            }
        }
        var reply = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !reply.contains(0) {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw ClientError.io(operation: "no reply within \(replyTimeoutSeconds) s; read", errno: ETIMEDOUT)
            }
            guard count > 0 else {
                throw count == 0 ? ClientError.protocolError("connection closed before the reply") : ClientError.io(operation: "read", errno: errno)
            }
            reply.append(contentsOf: buffer[..<count])
            guard reply.count <= Varlink.maximumMessageBytes else { throw ClientError.protocolError("reply too large") }
        }
        let end = reply.firstIndex(of: 0)!
        switch try Varlink.Reply.decode(Data(reply[..<end])) {
        case .parameters(let parameters): return parameters
        case .error(let name, let parameters): throw Varlink.RemoteError(name: name, parameters: parameters)
        }
    }
}

extension StatusReport {
    /// The status read from the state files when the daemon is not running:
    /// `daemon.running` is false and agents show as `stopped` (or `given-up`).
    public static func fromStateFiles(_ configuration: Configuration) -> (StatusReport, [String]) {
        var problems: [String] = []
        let now = Moment.now()
        let bootID = (try? BootID.current()) ?? ""
        let agents = configuration.agents.map { agent -> StatusReport.Agent in
            let store = ContentStore(stateDirectory: configuration.daemon.stateDirectory, agent: agent.name)
            var state = AgentStateFile()
            do { state = try AgentStateFile.load(path: store.stateFile) ?? AgentStateFile() } catch {
                problems.append("\(error)")
            }
            var policy = AgentPolicy(settings: agent.policySettings)
            policy.restore(from: state, currentBootID: bootID)
            return StatusReport.Agent(policy: policy, pid: nil, statusText: nil, at: now)
        }
        var bootLog = BootLog()
        do { bootLog = try BootLog.load(stateDirectory: configuration.daemon.stateDirectory) } catch { problems.append("\(error)") }
        let report = StatusReport(
            daemon: .init(running: false, pid: nil, version: Backstop.version),
            boot: .init(id: bootID, state: bootLog.state(of: bootID), consecutiveFailed: bootLog.consecutiveFailed(before: bootID)),
            agents: agents)
        return (report, problems)
    }
}
