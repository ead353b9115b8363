import Foundation

/// The user and group an agent runs as, looked up in the passwd and group databases
/// (getpwnam(3), getpwuid(3), getgrnam(3), getgrgid(3)).
public struct SandboxAccount: Sendable, Equatable {
    /// The user's name, or its number when it has no passwd entry.
    public var user: String
    /// The user's id.
    public var uid: UInt32
    /// The group's name, or its number when it has no group entry.
    public var group: String
    /// The group's id.
    public var gid: UInt32
    /// Whether the user has a passwd entry, so that its supplementary groups can be set from /etc/group.
    public var hasPasswdEntry: Bool

    /// The account for `spec`'s `user` and `group` (default: the user's primary group).
    /// - Throws: ``SandboxError`` when a name is unknown, a bare uid has no group given, or
    ///   the group is ``BubblewrapSandbox/launcherGroupName``.
    public static func resolve(_ spec: SandboxSpec) throws(SandboxError) -> SandboxAccount {
        var account: SandboxAccount
        if let entry = getpwnam(spec.user) ?? UInt32(spec.user).flatMap({ getpwuid($0) }) {
            account = SandboxAccount(
                user: String(cString: entry.pointee.pw_name), uid: entry.pointee.pw_uid, group: "",
                gid: entry.pointee.pw_gid, hasPasswdEntry: true)
        } else if let uid = UInt32(spec.user) {
            guard spec.group != nil else {
                throw SandboxError(message: "user \(uid) has no passwd entry, so it has no primary group; set group")
            }
            account = SandboxAccount(user: spec.user, uid: uid, group: "", gid: 0, hasPasswdEntry: false)
        } else {
            throw SandboxError(message: "user \"\(spec.user)\" does not exist on this machine")
        }
        if let group = spec.group {
            if let entry = getgrnam(group) ?? UInt32(group).flatMap({ getgrgid($0) }) {
                account.gid = entry.pointee.gr_gid
            } else if let gid = UInt32(group) {
                account.gid = gid
            } else {
                throw SandboxError(message: "group \"\(group)\" does not exist on this machine")
            }
        }
        account.group = getgrgid(account.gid).map { String(cString: $0.pointee.gr_name) } ?? String(account.gid)
        if account.gid == BubblewrapSandbox.launcherGroupID {
            throw SandboxError(message: "group \(account.group) (gid \(account.gid)) is the group bubblewrap runs in (\(BubblewrapSandbox.launcherGroupName)): an agent in it could reach the host's file system through bwrap's /proc entry; choose another")
        }
        // A name can map to these too (passwd, NSS): setresuid(2) would take them for "unchanged".
        for (kind, id) in [("user", account.uid), ("group", account.gid)] where !isValidID(id) {
            throw SandboxError(message: "\(kind) \(kind == "user" ? account.user : account.group) has id \(id), which the kernel and systemd take for \"unchanged\"; the agent would keep root's")
        }
        return account
    }

    /// Whether `id` can name a user or group: not (uid_t) -1 nor its 16-bit form, 65535
    /// (as systemd's `uid_is_valid()`).
    public static func isValidID(_ id: UInt32) -> Bool { id != .max && id != 0xFFFF }
}

extension SandboxAccount {
    /// Why this account cannot reach `path` (search permission on every directory above it
    /// from `top` down, by mode bits; ACLs are not consulted), nil when it can. Root reaches
    /// everything, but a sandboxed root without CAP_DAC_OVERRIDE does not: it is checked as
    /// its owner bits.
    public func cannotReach(_ path: String, from top: String = "/") -> String? {
        var directory = ""
        for component in path.split(separator: "/").dropLast() {
            directory += "/" + component
            var info = stat()
            guard BubblewrapSandbox.isInside(directory, top), stat(directory, &info) == 0 else { continue }
            let bit: mode_t = info.st_uid == uid ? 0o100 : info.st_gid == gid ? 0o010 : 0o001
            if info.st_mode & bit == 0 {
                return "user \(user) (uid \(uid)) cannot reach \(path): \(directory) is mode \(String(info.st_mode & 0o7777, radix: 8)), owner uid \(info.st_uid), group gid \(info.st_gid)"
            }
        }
        return nil
    }
}

/// A sandbox that cannot be set up: an unknown user or group, a missing bubblewrap.
public struct SandboxError: Error, Equatable, Sendable, CustomStringConvertible {
    /// What is wrong and what to do, one sentence.
    public var message: String
    /// The message.
    public var description: String { message }
}

/// What an engine makes of an agent's ``SandboxSpec``: each setting it applied and how,
/// and each it did not and why. `backstopctl sandbox AGENT` prints it.
public struct SandboxReport: Sendable, Equatable {
    /// One setting: its key (or a short name) and how it was applied, or why not.
    public struct Line: Sendable, Equatable {
        /// The key (`memory_max`) or a short name (`state directory`).
        public var setting: String
        /// How it was applied, or why not.
        public var detail: String
    }

    /// "direct (bubblewrap)" or "systemd (unit properties of UNIT)".
    public var engine: String
    /// What was applied, in the order of the command line or unit settings.
    public var applied: [Line] = []
    /// What was not, and why.
    public var notApplied: [Line] = []

    /// Adds `setting` to what was applied, with how.
    public mutating func apply(_ setting: String, _ detail: String) { applied.append(Line(setting: setting, detail: detail)) }
    /// Adds `setting` to what was not applied, with why.
    public mutating func skip(_ setting: String, _ why: String) { notApplied.append(Line(setting: setting, detail: why)) }

    /// The report as `backstopctl sandbox` prints it: the engine, then an aligned line per setting.
    public var text: String {
        let width = (applied + notApplied).map(\.setting.count).max() ?? 0
        func lines(_ items: [Line]) -> String {
            items.map { "  " + $0.setting.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.detail }
                .joined(separator: "\n")
        }
        var text = "engine: \(engine)\napplied:\n" + lines(applied) + "\n"
        text += notApplied.isEmpty ? "not applied: nothing\n" : "not applied:\n" + lines(notApplied) + "\n"
        return text
    }
}
