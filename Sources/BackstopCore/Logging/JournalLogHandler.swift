import Foundation
import Logging

/// A swift-log handler that writes structured journal entries (through ``LogOutput``):
/// `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`, `CODE_FILE`/`CODE_LINE`/`CODE_FUNC`, and
/// each metadata key as a `BACKSTOP_` field (systemd.journal-fields(7) naming rules).
/// It never writes `UNIT=`: that field belongs to systemd.
public struct JournalLogHandler: LogHandler {
    /// The `SYSLOG_IDENTIFIER` of every entry.
    public let identifier: String
    /// Metadata added to every entry, each key becoming a `BACKSTOP_` field (swift-log `LogHandler`).
    public var metadata: Logger.Metadata = [:]
    /// Supplies further metadata per entry; its keys win over ``metadata``'s (swift-log `LogHandler`).
    public var metadataProvider: Logger.MetadataProvider?
    /// The least severe level written, default `info` (swift-log `LogHandler`).
    public var logLevel: Logger.Level = .info

    /// A handler whose entries carry `SYSLOG_IDENTIFIER=identifier`, e.g. `backstopd`.
    public init(identifier: String) {
        self.identifier = identifier
    }

    /// One key of ``metadata`` (swift-log `LogHandler`).
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Sends one entry through ``LogOutput/emit(fields:line:)``: journald fields and a stderr line (swift-log `LogHandler`).
    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let context = merged.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
        var fields: [(String, String)] = [
            ("MESSAGE", event.message.description),
            ("PRIORITY", String(Journal.Priority(event.level).rawValue)),
            ("SYSLOG_IDENTIFIER", identifier),
            ("CODE_FILE", event.file),
            ("CODE_LINE", String(event.line)),
            ("CODE_FUNC", event.function),
        ]
        fields += context.map { (Self.fieldName(for: $0.0), $0.1) }
        LogOutput.emit(fields: fields, line: LogOutput.line(level: event.level.rawValue, context: context, message: event.message.description))
    }

    /// `BACKSTOP_` and the key in upper case, every character outside `A-Z0-9_` made `_`,
    /// cut to journald's 64-character limit on field names.
    public static func fieldName(for key: String) -> String {
        let body = key.uppercased().unicodeScalars.map { scalar -> Character in
            ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar) ? Character(scalar) : "_"
        }
        return String(("BACKSTOP_" + String(body)).prefix(64))
    }
}

extension Journal.Priority {
    /// The journal priority of a swift-log level.
    public init(_ level: Logger.Level) {
        switch level {
        case .trace, .debug: self = .debug
        case .info: self = .info
        case .notice: self = .notice
        case .warning: self = .warning
        case .error: self = .error
        case .critical: self = .critical
        }
    }
}
