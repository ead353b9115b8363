import Foundation
import SystemPackage

/// Where backstopd's entries go: journald when it listens (sd_journal_sendv), and also
/// stderr unless stderr already is the journal (`JOURNAL_STREAM`, systemd.exec(5)), so
/// that a daemon run by hand or by a test shows the same lines and none is written twice.
/// A failed send is never silent: the entry goes to stderr with the reason.
public enum LogOutput {
    /// Whether stderr is connected to the journal: `JOURNAL_STREAM` names its device and inode.
    public static let stderrIsJournal: Bool = {
        guard let stream = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] else { return false }
        let parts = stream.split(separator: ":")
        var info = stat()
        guard parts.count == 2, fstat(STDERR_FILENO, &info) == 0 else { return false }
        return UInt64(parts[0]) == UInt64(info.st_dev) && UInt64(parts[1]) == UInt64(info.st_ino)
    }()

    /// Emits one entry: `fields` to the journal, `line` (without newline) to stderr.
    public static func emit(fields: [(String, String)], line: String) {
        var echo = !stderrIsJournal
        var note = ""
        if Journal.isAvailable {
            do { try Journal.send(fields) } catch let error as Errno where error == .connectionRefused {
                // A socket left behind by a journald that is gone: said once, then stderr only.
                echo = true
                if unreachableReported.claim() {
                    note = " (journald is not running behind /run/systemd/journal/socket: \(error); logging to stderr)"
                }
            } catch {
                echo = true
                note = " (journal send failed: \(error))"
            }
        } else {
            echo = true
        }
        if echo {
            FileHandle.standardError.write(Data((line + note + "\n").utf8))
        }
    }

    private static let unreachableReported = OnceFlag()

    /// `2026-11-29T07:05:20Z warning [key=value ...] message`, the stderr form of an entry.
    public static func line(level: String, context: [(String, String)], message: String) -> String {
        let stamp = ISO8601DateFormatter().string(from: Date())
        let tags = context.isEmpty ? "" : "[" + context.map { "\($0.0)=\($0.1)" }.joined(separator: " ") + "] "
        return "\(stamp) \(level) \(tags)\(message)"
    }
}

/// True for the first caller of ``claim()`` only, from any thread.
final class OnceFlag: @unchecked Sendable {
    // @unchecked: `claimed` is only touched with `lock` held.
    private let lock = NSLock()
    private var claimed = false

    func claim() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !claimed else { return false }
        claimed = true
        return true
    }
}
