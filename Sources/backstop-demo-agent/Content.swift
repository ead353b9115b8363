/// A template type: the shape of the input the sensor hands the interpreter.
struct Template: Equatable {
    /// Unique name that instances refer to.
    let name: String
    /// Number of input fields the sensor supplies for this template.
    let fieldCount: Int
}

/// A template instance from a channel file: match criteria, one per field.
struct Instance: Equatable {
    /// Name of the template this instance claims to belong to.
    let templateName: String
    /// Match criteria; the count is whatever the content author wrote, which
    /// is exactly what the interpreter should not have trusted.
    let values: [String]
    /// `file:line` of the declaration, for error messages.
    let origin: String
}

/// Misbehaviour a content version can ask for, to exercise the supervisor.
enum Behavior: Equatable {
    /// Become ready, then stop heartbeating and block forever.
    case hangAfterStart
    /// Exit with this status right after loading.
    case exit(code: Int32)
    /// Wait this long before reporting readiness.
    case slowStart(seconds: Double)
    /// Run normally, then overrun an input array after this long.
    case crashAfter(seconds: Double)
}

/// One fully parsed and cross-checked content version.
struct ContentSet {
    /// Templates in declaration order.
    let templates: [Template]
    /// Instances from all channel files, in file-name then line order.
    let instances: [Instance]
    /// The requested behaviour, if any channel file declared one.
    let behavior: Behavior?
}

/// Why a content directory was rejected. These map to exit status 2 so a
/// supervisor can tell "refused bad content" apart from "crashed on content".
enum ContentError: Error, CustomStringConvertible {
    /// The directory could not be listed.
    case unreadableDirectory(path: String, reason: String)
    /// The directory has no templates.conf.
    case missingTemplates(path: String)
    /// A file exists but could not be read as UTF-8 text.
    case unreadableFile(path: String, reason: String)
    /// A line could not be parsed or fails a consistency check.
    case invalidLine(origin: String, reason: String)

    var description: String {
        switch self {
        case .unreadableDirectory(let path, let reason):
            "cannot read content directory \(path): \(reason)"
        case .missingTemplates(let path):
            "missing \(path)"
        case .unreadableFile(let path, let reason):
            "cannot read \(path): \(reason)"
        case .invalidLine(let origin, let reason):
            "\(origin): \(reason)"
        }
    }
}
