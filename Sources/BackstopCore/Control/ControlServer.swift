@preconcurrency import Dispatch
import Foundation
import Logging
import SystemPackage

/// The Varlink service on `<runtime_directory>/io.backstop.Manager`.
///
/// Sockets are non-blocking and driven by dispatch sources; each call is answered
/// by a task that awaits the ``Supervisor``, so a slow or hostile client never
/// blocks supervision or other clients. A client is dropped when a message
/// exceeds ``Varlink/maximumMessageBytes``, when it sends nothing for
/// ``idleTimeoutSeconds``, or when it does not read its replies.
///
/// A call may come with file descriptors (`SCM_RIGHTS`, unix(7); ``DescriptorPassing``),
/// which its parameters name by index (`Stage`'s bundle). They are received close-on-exec,
/// at most ``maximumPendingDescriptors`` waiting per connection, and closed once their
/// call is answered, whether it used them or not, or when the connection closes first.
/// Only root's calls take descriptors: those of any other peer are closed on receipt.
///
/// Every call from a process of a supervised agent is refused, whatever its uid, root
/// included, reading the status too (``CallerProcess``, ``Supervisor/agent(calling:)``), and
/// so is every call from a process that cannot be identified. Refused calls are logged at
/// debug priority, a journald rate-limit pool that no decision uses (journald counts its
/// limit per unit and per priority class), once per connection and at most
/// ``maximumRefusalEntries`` times per ``refusalWindowSeconds`` in all; the rest are counted
/// in one entry at the end of the window. So no flood of refused calls can make journald
/// drop a decision, nor fill the journal.
// @unchecked: mutable state (the connection table) is touched only on `queue`.
public final class ControlServer: @unchecked Sendable {
    /// The socket's path, `<runtime_directory>/io.backstop.Manager`.
    public let path: String
    private let supervisor: Supervisor
    private let logger: Logger
    private let queue = DispatchQueue(label: "backstop.control")
    private let listener: Int32
    private var acceptSource: (any DispatchSourceRead)?
    private var connections: [Int32: Connection] = [:]
    /// Connections accepted so far; numbers them in order of arrival.
    private var acceptedCount = 0
    /// Logs refused calls and closed connections, at debug priority.
    private let refusalLogger: Logger
    /// When the current window of refusal entries ends; nil before the first refusal.
    private var refusalWindowEnd: DispatchTime?
    /// Refusal entries written in the current window.
    private var refusalEntries = 0
    /// Refused calls and closed connections not logged one by one since the last summary.
    private var unloggedRefusals = 0
    /// Writes the summary of ``unloggedRefusals`` at the end of the window.
    private var refusalSummary: (any DispatchSourceTimer)?

    /// Connections served at once; more are closed on accept.
    public static let maximumConnections = 256
    /// Connections served at once for one user other than root, or for one systemd unit of
    /// root's (an agent's unit or scope, an operator's session); more are closed on accept.
    public static let maximumConnectionsPerCaller = 32
    /// Refused calls (and connections closed to make room) logged one by one per window, in all.
    public static let maximumRefusalEntries = 10
    /// The length of a window of refusal entries, in seconds.
    public static let refusalWindowSeconds = 60
    /// A connection with no complete message for this long (while no call of it runs) is closed.
    public static let idleTimeoutSeconds = 30
    /// Descriptors that may wait for their calls on one connection (a `Stage` call takes one);
    /// a client that sends more, or more than fit with one message (`MSG_CTRUNC`), is dropped.
    public static let maximumPendingDescriptors = 4

    /// Binds and listens. The socket is `0660 root:backstop` when group `backstop`
    /// exists, else `0600`.
    /// - Throws: `Errno` from socket(2), bind(2), listen(2), chmod(2) or chown(2).
    public init(path: String, supervisor: Supervisor, logger: Logger) throws {
        self.path = path
        self.supervisor = supervisor
        self.logger = logger
        var refusalLogger = logger
        refusalLogger.logLevel = .debug
        self.refusalLogger = refusalLogger
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        do {
            _ = unlink(path)
            try UnixSocketAddress.withAddress(path) { address, length in
                guard bind(fd, address, length) == 0 else { throw Errno(rawValue: errno) }
            }
            if let group = BackstopGroup.id {
                guard chown(path, 0, group) == 0, chmod(path, 0o660) == 0 else { throw Errno(rawValue: errno) }
            } else {
                guard chmod(path, 0o600) == 0 else { throw Errno(rawValue: errno) }
            }
            guard listen(fd, 128) == 0 else { throw Errno(rawValue: errno) }
        } catch {
            close(fd)
            throw error
        }
        listener = fd
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler { [weak self] in self?.acceptAll() }
        source.setCancelHandler { close(fd) }
        acceptSource = source
        source.resume()
    }

    /// Stops accepting, closes every connection and removes the socket file.
    public func stop() {
        queue.sync {
            acceptSource?.cancel()
            acceptSource = nil
            for connection in connections.values { connection.close() }
            connections = [:]
            refusalSummary?.cancel()
            refusalSummary = nil
        }
        _ = unlink(path)
    }

    private func acceptAll() {
        while true {
            // accept4(2) is hidden behind _GNU_SOURCE in Glibc's module; set the flags with fcntl(2).
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            guard let peer = try? PeerCredentials.of(socket: fd) else {
                Glibc.close(fd)
                continue
            }
            let caller = CallerProcess.identify(socket: fd, pid: peer.pid)
            let key = Self.capKey(peer: peer, caller: caller)
            // Make room, so that no crowd of clients can lock the operator out: first a client
            // that does not read its replies, then the oldest connection without a call
            // running, then the oldest one (its call still completes; only the reply is lost).
            // The newcomer, such as an operator's status call, stays. One user (one unit of
            // root's) makes room among its own connections only.
            func rank(_ connection: Connection) -> (Int, Int, Int) {
                (connection.isBlocked ? 0 : 1, connection.isIdle ? 0 : 1, connection.serial)
            }
            let own = key.map { key in connections.values.filter { $0.capKey == key } } ?? []
            let callerFull = own.count >= Self.maximumConnectionsPerCaller
            let crowd = callerFull ? own : connections.count >= Self.maximumConnections ? Array(connections.values) : []
            if let evicted = crowd.min(by: { rank($0) < rank($1) }) {
                noteRefusal(of: nil, "Closed the oldest control connection\(callerFull ? " of its user or unit" : "") to make room.",
                            metadata: ["peer_uid": "\(evicted.peer.uid)", "peer_pid": "\(evicted.peer.pid)"])
                evicted.close()
            }
            acceptedCount += 1
            let connection = Connection(fd: fd, peer: peer, caller: caller, capKey: key, serial: acceptedCount, queue: queue, server: self)
            connections[fd] = connection
            connection.start()
        }
    }

    fileprivate func closed(_ connection: Connection) {
        connections[connection.fd] = nil
    }

    /// What the connections of one caller count against (``maximumConnectionsPerCaller``):
    /// its uid, or for root the unit its process is in; nil (only the total counts) for root
    /// outside any unit.
    private static func capKey(peer: PeerCredentials, caller: CallerProcess.Identification) -> String? {
        if peer.uid != 0 { return "uid \(peer.uid)" }
        guard case .identified(let process) = caller, let unit = process.unit else { return nil }
        return "unit \(unit)"
    }

    /// Logs a refused call of `connection` (nil: a connection closed to make room) at debug
    /// priority: the first of each connection, up to ``maximumRefusalEntries`` per window;
    /// the others are counted, and said in one entry at the end of the window. On `queue`.
    private func noteRefusal(of connection: Connection?, _ message: Logger.Message, metadata: Logger.Metadata) {
        let now = DispatchTime.now()
        if refusalWindowEnd.map({ now >= $0 }) ?? true {
            refusalWindowEnd = now + .seconds(Self.refusalWindowSeconds)
            refusalEntries = 0
        }
        if connection?.refusalLogged != true, refusalEntries < Self.maximumRefusalEntries {
            connection?.refusalLogged = true
            refusalEntries += 1
            refusalLogger.debug(message, metadata: metadata)
            return
        }
        unloggedRefusals += 1
        guard refusalSummary == nil, let end = refusalWindowEnd else { return }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: end)
        timer.setEventHandler { [weak self] in
            guard let self else { return }
            refusalLogger.debug("\(unloggedRefusals) further refused control calls or closed connections were not logged one by one in the last \(Self.refusalWindowSeconds) s.",
                                metadata: ["refused": "\(unloggedRefusals)"])
            unloggedRefusals = 0
            refusalSummary?.cancel()
            refusalSummary = nil
        }
        refusalSummary = timer
        timer.resume()
    }

    fileprivate func answer(_ call: Varlink.Call, descriptors: [FileDescriptor], connection: Connection) async -> Varlink.Reply {
        let peer = connection.peer
        let metadata: Logger.Metadata = ["method": "\(call.method)", "peer_uid": "\(peer.uid)", "peer_pid": "\(peer.pid)"]
        let refusal: String? = switch connection.caller {
        case .identified(let process): await supervisor.agent(calling: process).map { "calls from a supervised agent are refused: \($0)" }
        case .unidentified(let why): "calls from a process backstopd cannot identify are refused: \(why)"
        }
        if let refusal {
            queue.async { [self] in noteRefusal(of: connection, "Refused a control call: \(refusal).", metadata: metadata) }
            return ManagerInterface.callerRefusal(refusal)
        }
        let reply = await ManagerInterface.handle(call, descriptors: descriptors, peer: peer, supervisor: supervisor)
        let method = call.method.split(separator: ".").last.map(String.init) ?? call.method
        switch reply {
        case .error(let name, _) where name.hasSuffix(".PermissionDenied"):
            queue.async { [self] in noteRefusal(of: connection, "Denied a control request.", metadata: metadata) }
        case .error(let name, let replyParameters) where ManagerInterface.mutating.contains(method):
            let parameters = (try? JSONSerialization.jsonObject(with: call.parameters) as? [String: Any]) ?? [:]
            let reason = ((try? JSONSerialization.jsonObject(with: replyParameters) as? [String: Any])?["message"] as? String)
            var refusal = metadata
            // The caller's words, shown safely: a bundle path may hold control characters.
            for key in ["agent", "version", "path"] { if let value = parameters[key] { refusal[key] = "\(EntryName.escaped("\(value)"))" } }
            logger.notice("Refused the operator request \(method) (\(name))\(reason.map { ": " + $0 } ?? ".")", metadata: refusal)
        case .parameters where ManagerInterface.mutating.contains(method):
            // Who changed what, for the record (the decisions it led to are logged on their own).
            let parameters = (try? JSONSerialization.jsonObject(with: call.parameters) as? [String: Any]) ?? [:]
            let target = ["agent", "version", "to"].compactMap { key in parameters[key].map { "\(key) \($0)" } }
            logger.notice("Operator request \(method)\(target.isEmpty ? "" : " (" + target.joined(separator: ", ") + ")") carried out.",
                          metadata: metadata)
        default:
            break
        }
        return reply
    }
}

/// One client connection; all of its state lives on the server's queue.
// @unchecked: touched only on the server's serial queue.
private final class Connection: @unchecked Sendable {
    let fd: Int32
    let peer: PeerCredentials
    /// Its process, as read at accept.
    let caller: CallerProcess.Identification
    /// What it counts against (``ControlServer/maximumConnectionsPerCaller``).
    let capKey: String?
    /// A refused call of it was logged; the next ones are only counted.
    var refusalLogged = false
    /// The order of arrival: lower is older.
    let serial: Int
    let queue: DispatchQueue
    weak var server: ControlServer?
    private var readSource: (any DispatchSourceRead)?
    private var writeSource: (any DispatchSourceWrite)?
    private var idleTimer: (any DispatchSourceTimer)?
    private var input = Data()
    /// Descriptors received and not yet taken by a call, with the position in `input` of
    /// the last byte received with them: they belong to the message holding that byte.
    private var pendingDescriptors: [(position: Int, descriptor: FileDescriptor)] = []
    private var output = Data()
    private var inFlight = false
    private var isClosed = false
    /// Reading stops while a full message's worth of input waits to be answered.
    private var readingPaused = false
    /// Input waiting to be answered is capped: at a whole message of up to
    /// ``Varlink/maximumMessageBytes``, and at 64 KiB once a complete message is queued,
    /// so that many pipelining clients together stay small.
    private var inputIsFull: Bool {
        input.count >= Varlink.maximumMessageBytes || (input.count >= 65536 && input.contains(0))
    }


    /// No call of it is running: it waits for the client (to send, or to read its reply).
    var isIdle: Bool { !inFlight }

    /// A reply waits for the client to read it.
    var isBlocked: Bool { !output.isEmpty }

    init(fd: Int32, peer: PeerCredentials, caller: CallerProcess.Identification, capKey: String?, serial: Int, queue: DispatchQueue, server: ControlServer) {
        self.fd = fd
        self.peer = peer
        self.caller = caller
        self.capKey = capKey
        self.serial = serial
        self.queue = queue
        self.server = server
    }

    func start() {
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler { [self] in readAvailable() }
        let fd = self.fd
        source.setCancelHandler { Glibc.close(fd) }
        readSource = source
        source.resume()
        resetIdleTimer()
    }

    private func resetIdleTimer() {
        idleTimer?.cancel()
        guard !isClosed else { return }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .seconds(ControlServer.idleTimeoutSeconds))
        timer.setEventHandler { [self] in close() }
        idleTimer = timer
        timer.resume()
    }

    private func readAvailable() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        reading: while !isClosed && !inputIsFull {
            let received: DescriptorPassing.Received
            let result = buffer.withUnsafeMutableBytes { bytes in
                Result { () throws(DescriptorPassing.ReceiveError) in
                    try DescriptorPassing.receive(fd, into: bytes, maximumDescriptors: ControlServer.maximumPendingDescriptors)
                }
            }
            switch result {
            case .success(let value): received = value
            case .failure(.system(.interrupted)): continue
            case .failure(.system(.resourceTemporarilyUnavailable)): break reading
            case .failure:
                // The socket broke, or more descriptors came than may wait (MSG_CTRUNC): the
                // stream can no longer be matched to its descriptors.
                close()
                return
            }
            let descriptors = received.descriptors.map(FileDescriptor.init(rawValue:))
            guard received.byteCount > 0 else {
                // The client closed its end: replies in flight are dropped.
                Self.close(descriptors)
                close()
                return
            }
            guard !closeAfterFlush else {
                Self.close(descriptors)
                continue
            }
            input.append(contentsOf: buffer[..<received.byteCount])
            guard keep(descriptors) else { return }
        }
        if inputIsFull {
            guard input.contains(0) else {
                fail("org.varlink.service.InvalidParameter", "message larger than \(Varlink.maximumMessageBytes) bytes")
                return
            }
            // A client that sends faster than it reads replies waits: memory stays bounded.
            if !readingPaused {
                readingPaused = true
                readSource?.suspend()
            }
        }
        serveNext()
    }

    /// Keeps descriptors that came with the bytes just appended to `input`, for the call they
    /// belong to. Only root's calls take descriptors, so a peer other than root has them
    /// closed at once and cannot make the daemon hold any.
    /// - Returns: false when they are past ``ControlServer/maximumPendingDescriptors`` and the connection is closed.
    private func keep(_ descriptors: [FileDescriptor]) -> Bool {
        guard !descriptors.isEmpty else { return true }
        guard peer.uid == 0 else {
            Self.close(descriptors)
            return true
        }
        guard pendingDescriptors.count + descriptors.count <= ControlServer.maximumPendingDescriptors else {
            Self.close(descriptors)
            close()
            return false
        }
        pendingDescriptors += descriptors.map { (input.count - 1, $0) }
        return true
    }

    /// Takes the pending descriptors of the message that ended at `end` (its NUL), which was
    /// just removed from the front of `input`.
    private func takeDescriptors(through end: Int) -> [FileDescriptor] {
        let taken = pendingDescriptors.filter { $0.position <= end }.map(\.descriptor)
        pendingDescriptors = pendingDescriptors.filter { $0.position > end }.map { ($0.position - end - 1, $0.descriptor) }
        return taken
    }

    private static func close(_ descriptors: [FileDescriptor]) {
        for descriptor in descriptors { try? descriptor.close() }
    }

    /// Calls are answered one at a time, in order, as Varlink requires on one connection,
    /// and the next only once the client has taken the previous reply.
    private func serveNext() {
        guard !inFlight, !isClosed, output.isEmpty, let end = input.firstIndex(of: 0) else { return }
        // `input` is always a fresh Data (start index 0), so `end` is also a position in it.
        let message = input[input.startIndex..<end]
        input = Data(input[(end + 1)...])
        if readingPaused && !inputIsFull {
            readingPaused = false
            readSource?.resume()
        }
        // A call may run long (staging a large tree): the idle clock stops meanwhile.
        idleTimer?.cancel()
        let call: Varlink.Call
        do { call = try Varlink.Call.decode(Data(message)) } catch {
            fail("org.varlink.service.InvalidParameter", error.message)
            return
        }
        let descriptors = takeDescriptors(through: end)
        inFlight = true
        Task { [self] in
            let reply = await server?.answer(call, descriptors: descriptors, connection: self)
            Self.close(descriptors)
            queue.async { [self] in
                inFlight = false
                resetIdleTimer()
                if let reply, !call.oneway { send(reply.encoded) } else { serveNext() }
            }
        }
    }

    private func fail(_ error: String, _ message: String) {
        input = Data()
        Self.close(pendingDescriptors.map(\.descriptor))
        pendingDescriptors = []
        closeAfterFlush = true
        send(Varlink.Reply.failure(error, ["parameter": message]).encoded)
    }

    /// After a protocol error: further input is discarded and the connection closes once the error is sent.
    private var closeAfterFlush = false

    private func send(_ data: Data) {
        output.append(data)
        flush()
    }

    private func flush() {
        while !output.isEmpty && !isClosed {
            let written = output.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written > 0 {
                output.removeFirst(written)
                continue
            }
            if written < 0 && errno == EAGAIN {
                waitForWritable()
                return
            }
            close()
            return
        }
        if closeAfterFlush {
            close()
            return
        }
        serveNext()
    }

    private func waitForWritable() {
        guard writeSource == nil else { return }
        let source = DispatchSource.makeWriteSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler { [self] in
            writeSource?.cancel()
            writeSource = nil
            flush()
        }
        writeSource = source
        source.resume()
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        Self.close(pendingDescriptors.map(\.descriptor))
        pendingDescriptors = []
        idleTimer?.cancel()
        writeSource?.cancel()
        // The read source's cancel handler closes the descriptor, after the last event;
        // a suspended source runs no handler until it is resumed.
        readSource?.cancel()
        if readingPaused {
            readingPaused = false
            readSource?.resume()
        }
        server?.closed(self)
    }
}
