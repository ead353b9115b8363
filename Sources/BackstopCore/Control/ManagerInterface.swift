import Foundation
import SystemPackage

/// The `io.backstop.Manager` Varlink interface: method names, parameters, errors,
/// authorization, and dispatch to the ``Supervisor``.
public enum ManagerInterface {
    /// The interface name, also the socket's file name and the prefix of its error names.
    public static let name = "io.backstop.Manager"

    /// The interface in Varlink's IDL, as `org.varlink.service.GetInterfaceDescription` returns it.
    public static let description = """
        # Backstop: supervises endpoint security agents and rolls bad content back.
        interface io.backstop.Manager

        type Version (
          id: string,
          digest: string,
          digest_format: ?int,
          standing: string,
          file_count: int,
          total_bytes: int,
          staged_at: string,
          promoted_at: ?string,
          quarantined_at: ?string,
          quarantine_reason: ?string,
          signed_by: ?string,
          files_removed_at: ?string
        )

        # The daemon, the boot and every agent (or only one); see backstopctl status --json.
        method GetStatus(agent: ?string) -> (daemon: object, boot: object, agents: []object)
        method ListContent(agent: string) -> (versions: []Version)
        # The recent boots, oldest first, with their state and the versions active in them.
        method ListBoots() -> (boots: []object)
        # Copies a bundle (a directory or a tar archive) into the store; needs root. The caller
        # opens it and sends the descriptor with this call as SCM_RIGHTS ancillary data
        # (unix(7)); file_descriptor is its index among the descriptors sent with the call.
        # backstopd reads only through it and never opens a path for the caller; path is
        # the caller's path of the bundle, for messages and records.
        method Stage(agent: string, path: string, file_descriptor: int, version: ?string, activate: ?bool) -> (version: Version)
        method Activate(agent: string, version: string) -> ()
        method Promote(agent: string, version: string) -> ()
        # Returns the version now active.
        method Rollback(agent: string, to: ?string) -> (version: ?string)
        method Release(agent: string, version: string) -> ()
        method ResetFailed(agent: ?string) -> ()
        # Stops the agent until Start; needs root.
        method Stop(agent: string) -> ()
        # Starts the agent now (after Stop, during a backoff, or after giving up); needs root.
        method Start(agent: string) -> (state: string, reason: ?string)

        error NoSuchAgent (agent: string, message: string)
        error NoSuchVersion (version: string, message: string)
        error VersionQuarantined (version: string, message: string)
        error PreflightFailed (version: string, message: string)
        error NoKnownGood (message: string)
        error AlreadyActive (version: string, message: string)
        error NotQuarantined (version: string, message: string)
        error StagingRefused (message: string)
        # Stage came without a descriptor sent with it, or without file_descriptor.
        error FileDescriptorRequired (message: string)
        # Also every call, of any method, from a process of a supervised agent, whatever its uid.
        error PermissionDenied (message: string)
        error ShuttingDown (message: string)
        """

    /// Methods that change anything; they need uid 0.
    static let mutating: Set<String> = ["Stage", "Activate", "Promote", "Rollback", "Release", "ResetFailed", "Stop", "Start"]

    struct AgentParameter: Codable { var agent: String }
    struct OptionalAgentParameter: Codable { var agent: String? }
    struct VersionParameters: Codable { var agent: String; var version: String }
    struct StageParameters: Codable {
        var agent: String
        var path: String
        /// The index of the bundle's descriptor among those sent with the call.
        var fileDescriptor: Int?
        var version: String?
        var activate: Bool?

        enum CodingKeys: String, CodingKey {
            case agent, path, version, activate
            case fileDescriptor = "file_descriptor"
        }
    }
    struct RollbackParameters: Codable { var agent: String; var to: String? }
    struct VersionsReply: Codable { var versions: [VersionRecord] }
    struct BootsReply: Codable { var boots: [BootRecord] }
    struct StageReply: Codable { var version: VersionRecord }
    struct Empty: Codable {}

    /// Answers one call from a peer with the given credentials.
    /// - Parameter descriptors: the descriptors sent with the call (SCM_RIGHTS, unix(7)),
    ///   which the call's parameters name by index; borrowed: the caller closes them once
    ///   this returns, whether the call used them or not.
    public static func handle(
        _ call: Varlink.Call, descriptors: [FileDescriptor], peer: PeerCredentials, supervisor: Supervisor
    ) async -> Varlink.Reply {
        if call.method.hasPrefix("org.varlink.service.") { return service(call) }
        guard call.method.hasPrefix(name + "."), !call.method.dropFirst(name.count + 1).contains(".") else {
            let interface = call.method.split(separator: ".").dropLast().joined(separator: ".")
            return .failure("org.varlink.service.InterfaceNotFound", ["interface": interface])
        }
        let method = String(call.method.dropFirst(name.count + 1))
        if let denial = authorize(method, peer: peer) { return denial }
        if mutating.contains(method) { FaultInjection.arm() }
        do {
            switch method {
            case "GetStatus":
                let parameters = try decode(OptionalAgentParameter.self, call)
                return .of(try await supervisor.status(agent: parameters.agent))
            case "ListBoots":
                return .of(BootsReply(boots: await supervisor.boots()))
            case "ListContent":
                let parameters = try decode(AgentParameter.self, call)
                return .of(VersionsReply(versions: try await supervisor.versions(agent: parameters.agent)))
            case "Stage":
                let parameters = try decode(StageParameters.self, call)
                guard parameters.path.hasPrefix("/") else { throw InvalidParameter(parameter: "path") }
                guard let index = parameters.fileDescriptor, !descriptors.isEmpty else {
                    return .failure(name + ".FileDescriptorRequired", ["message": fileDescriptorRequired])
                }
                guard descriptors.indices.contains(index) else { throw InvalidParameter(parameter: "file_descriptor") }
                let bundle: OpenBundle
                do throws(StoreError) { bundle = try OpenBundle(descriptor: descriptors[index], path: parameters.path) } catch {
                    throw ManagerError.store(error)
                }
                let record = try await supervisor.stage(
                    agent: parameters.agent, bundle: bundle, version: parameters.version, activate: parameters.activate ?? false,
                    callerCapabilities: PeerCapabilities.effective(of: peer))
                return .of(StageReply(version: record))
            case "Activate":
                let parameters = try decode(VersionParameters.self, call)
                try await supervisor.activate(agent: parameters.agent, version: parameters.version)
            case "Promote":
                let parameters = try decode(VersionParameters.self, call)
                try await supervisor.promote(agent: parameters.agent, version: parameters.version)
            case "Rollback":
                let parameters = try decode(RollbackParameters.self, call)
                let version = try await supervisor.rollback(agent: parameters.agent, to: parameters.to)
                return .of(["version": version])
            case "Release":
                let parameters = try decode(VersionParameters.self, call)
                try await supervisor.release(agent: parameters.agent, version: parameters.version)
            case "ResetFailed":
                let parameters = try decode(OptionalAgentParameter.self, call)
                try await supervisor.resetFailed(agent: parameters.agent)
            case "Stop":
                try await supervisor.stop(agent: try decode(AgentParameter.self, call).agent)
            case "Start":
                let (state, reason) = try await supervisor.start(agent: try decode(AgentParameter.self, call).agent)
                return .of(["state": state, "reason": reason])
            default:
                return .failure("org.varlink.service.MethodNotFound", ["method": call.method])
            }
            return .of(Empty())
        } catch let error as ManagerError {
            return reply(for: error)
        } catch let error as InvalidParameter {
            return .failure("org.varlink.service.InvalidParameter", ["parameter": error.parameter])
        } catch {
            return .failure("org.varlink.service.InvalidParameter", ["parameter": "\(error)"])
        }
    }

    /// The `message` of `FileDescriptorRequired`.
    static let fileDescriptorRequired =
        "Stage takes the bundle as an open descriptor sent with the call (SCM_RIGHTS) and named by file_descriptor; "
        + "backstopd does not open paths on a caller's behalf (backstopctl stage opens the bundle and sends it)"

    /// The Varlink error for a refused request.
    static func reply(for error: ManagerError) -> Varlink.Reply {
        let message = error.description
        switch error {
        case .noSuchAgent(let agent): return .failure(name + ".NoSuchAgent", ["agent": agent, "message": message])
        case .policy(.noSuchVersion(let id)), .store(.missingVersion(let id)):
            return .failure(name + ".NoSuchVersion", ["version": id, "message": message])
        case .policy(.versionQuarantined(let id)), .policy(.identicalToQuarantined(let id, _)):
            return .failure(name + ".VersionQuarantined", ["version": id, "message": message])
        case .policy(.noKnownGood), .policy(.notKnownGood): return .failure(name + ".NoKnownGood", ["message": message])
        case .policy(.alreadyActive(let id)): return .failure(name + ".AlreadyActive", ["version": id, "message": message])
        case .policy(.notQuarantined(let id)): return .failure(name + ".NotQuarantined", ["version": id, "message": message])
        case .store: return .failure(name + ".StagingRefused", ["message": message])
        case .preflightFailed(let id, _), .preflightCouldNotRun(let id, _): return .failure(name + ".PreflightFailed", ["version": id, "message": message])
        case .shuttingDown: return .failure(name + ".ShuttingDown", ["message": message])
        }
    }

    /// The reply to every call from a process of a supervised agent (``Supervisor/agent(calling:)``)
    /// or from one that cannot be identified (``CallerProcess/Identification``), whatever its
    /// uid; `message` says which and why.
    static func callerRefusal(_ message: String) -> Varlink.Reply {
        .failure(name + ".PermissionDenied", ["message": message])
    }

    /// Mutating methods need uid 0; reading needs uid 0 or membership of group `backstop`.
    static func authorize(_ method: String, peer: PeerCredentials) -> Varlink.Reply? {
        if peer.uid == 0 { return nil }
        if mutating.contains(method) {
            return .failure(name + ".PermissionDenied", ["message": "\(method) needs root (uid 0); you are uid \(peer.uid)"])
        }
        if let group = BackstopGroup.id, PeerGroups.of(peer).contains(group) { return nil }
        return .failure(name + ".PermissionDenied", ["message": "reading the status needs root or membership of group backstop"])
    }

    static func service(_ call: Varlink.Call) -> Varlink.Reply {
        switch call.method {
        case "org.varlink.service.GetInfo":
            return .of([
                "vendor": AnyCodable.string("Backstop"), "product": .string("backstopd"), "version": .string(Backstop.version),
                "url": .string("file:///usr/share/doc/backstop/README.md"),
                "interfaces": .strings(["org.varlink.service", name]),
            ])
        case "org.varlink.service.GetInterfaceDescription":
            let requested = (try? JSONSerialization.jsonObject(with: call.parameters) as? [String: Any])?["interface"] as? String
            guard requested == name else {
                return .failure("org.varlink.service.InterfaceNotFound", ["interface": requested ?? ""])
            }
            return .of(["description": description])
        default:
            return .failure("org.varlink.service.MethodNotFound", ["method": call.method])
        }
    }

    struct InvalidParameter: Error { var parameter: String }

    static func decode<T: Decodable>(_ type: T.Type, _ call: Varlink.Call) throws -> T {
        do { return try JSONDecoder.backstop.decode(type, from: call.parameters) } catch let DecodingError.keyNotFound(key, _) {
            throw InvalidParameter(parameter: key.stringValue)
        } catch let DecodingError.typeMismatch(_, context) {
            throw InvalidParameter(parameter: context.codingPath.map(\.stringValue).joined(separator: "."))
        } catch {
            throw InvalidParameter(parameter: "parameters")
        }
    }
}

/// A JSON value of GetInfo's reply, which mixes strings and a list.
enum AnyCodable: Encodable {
    case string(String)
    case strings([String])

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .strings(let values): try container.encode(values)
        }
    }
}

/// The `backstop` group that may read the status.
public enum BackstopGroup {
    /// Its gid from getgrnam(3), nil when the group does not exist.
    public static var id: UInt32? {
        guard let entry = getgrnam("backstop") else { return nil }
        return entry.pointee.gr_gid
    }
}

/// What `/proc/PID/status` (proc(5)) says of a peer process.
enum PeerStatus {
    /// The value after `name:` on its line, trimmed; nil when the process or the line is gone.
    static func field(_ name: String, of peer: PeerCredentials) -> Substring? {
        guard let status = try? String(contentsOfFile: "/proc/\(peer.pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
        return line.dropFirst(name.count + 1).drop { $0 == " " || $0 == "\t" }
    }
}

/// The effective capabilities of a peer process.
enum PeerCapabilities {
    /// `CapEff:`, bit N for capability N; none when it cannot be read.
    static func effective(of peer: PeerCredentials) -> UInt64 {
        PeerStatus.field("CapEff", of: peer).flatMap { UInt64($0, radix: 16) } ?? 0
    }
}

/// The groups of a peer process.
enum PeerGroups {
    /// The primary gid and the supplementary groups (`Groups:`).
    static func of(_ peer: PeerCredentials) -> Set<UInt32> {
        let supplementary = PeerStatus.field("Groups", of: peer)?.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) } ?? []
        return Set(supplementary).union([peer.gid])
    }
}
