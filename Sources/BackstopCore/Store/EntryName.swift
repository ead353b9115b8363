import Foundation

/// Names and link targets read from a bundle: decoded strictly as UTF-8, and made safe to
/// show before they reach a terminal or the journal.
enum EntryName {
    /// `text` with every control character (Unicode general category Cc: U+0000 to U+001F,
    /// U+007F, and the C1 controls U+0080 to U+009F) written as an escape: `\n`, `\r`, `\t`,
    /// else `\xNN` (C0 and DEL) or `\u{NN}` (C1). A name from a bundle shown this way cannot
    /// move a terminal's cursor, clear its screen, or start a forged line in a log.
    static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var result = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7f: result += "\\x" + hex(scalar.value)
            case _ where isControl(scalar): result += "\\u{" + hex(scalar.value) + "}"
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result
    }

    /// Whether `scalar` is a control character (general category Cc).
    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value)
    }

    /// The bytes as text when they are valid UTF-8, nil otherwise (never repaired with U+FFFD).
    static func decode<Bytes: Collection>(_ bytes: Bytes) -> String? where Bytes.Element == UInt8 {
        var text = ""
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar): text.unicodeScalars.append(scalar)
            case .emptyInput: return text
            case .error: return nil
            }
        }
    }

    /// Bytes that may not be valid UTF-8, shown: valid sequences as text (escaped as
    /// ``escaped(_:)`` does), every byte of an invalid one as `\xNN`.
    static func shown<Bytes: Collection>(bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var result = ""
        var rest = Array(bytes)[...]
        while !rest.isEmpty {
            // The longest valid prefix (a UTF-8 sequence is at most 4 bytes), else one byte escaped.
            if let length = (1...min(4, rest.count)).first(where: { decode(rest.prefix($0)) != nil }) {
                result += escaped(decode(rest.prefix(length))!)
                rest = rest.dropFirst(length)
            } else {
                result += "\\x" + hex(UInt32(rest.first!))
                rest = rest.dropFirst()
            }
        }
        return result
    }

    /// A name or link target read from the file system or an archive, as text.
    /// - Parameters:
    ///   - directory: the path of the directory holding the entry, for the error; nil at the top.
    ///   - entry: the entry whose link target `bytes` is; nil when `bytes` is the entry's name.
    /// - Throws: ``StoreError/refusedEntry(path:reason:)`` naming the entry, its invalid
    ///   bytes shown as `\xNN`, when the bytes are not valid UTF-8.
    static func text<Bytes: Collection>(_ bytes: Bytes, in directory: String? = nil, linkOf entry: String? = nil) throws(StoreError) -> String
    where Bytes.Element == UInt8 {
        if let text = decode(bytes) { return text }
        guard let entry else {
            throw .refusedEntry(path: (directory.map { $0 + "/" } ?? "") + shown(bytes: bytes), reason: "has a name that is not valid UTF-8")
        }
        throw .refusedEntry(path: entry, reason: "is a symlink whose target is not valid UTF-8 (\(shown(bytes: bytes)))")
    }

    /// ``text(_:in:linkOf:)`` of a NUL-terminated string.
    static func text(cString: UnsafePointer<CChar>, in directory: String? = nil, linkOf entry: String? = nil) throws(StoreError) -> String {
        try text(UnsafeBufferPointer(start: UnsafeRawPointer(cString).assumingMemoryBound(to: UInt8.self), count: strlen(cString)),
                 in: directory, linkOf: entry)
    }

    private static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return digits.count < 2 ? "0" + digits : digits
    }
}
