import Crypto
import Foundation
import SwiftASN1
import SystemPackage

/// A bundle's manifest: every entry of its tree, with each file's SHA-256 and size.
///
/// It sits in the bundle as `.backstop/manifest` (JSON, UTF-8), optionally with a
/// detached Ed25519 signature over its exact bytes as `.backstop/manifest.sig` (the 64
/// raw bytes RFC 8032 defines, what `openssl pkeyutl -sign -rawin` writes). The
/// `.backstop/` directory is not part of the content. Shape:
///
/// ```
/// { "format": "backstop-manifest/1",
///   "files": [ {"path": "rules/main.rules", "size": 1234, "sha256": "<64 hex>", "executable": false} ],
///   "symlinks": [ {"path": "current", "target": "rules"} ],
///   "directories": [ "empty" ] }
/// ```
/// Paths are relative, `/`-separated, without `.` or `..` components. `executable`
/// may be left out (false); `symlinks` and `directories` too (none). A directory that
/// holds a listed entry need not be listed. The tree must match it exactly.
public struct BundleManifest: Codable, Sendable, Equatable {
    /// The metadata directory at the top of a bundle.
    public static let directoryName = ".backstop"
    /// The manifest's file name in ``directoryName``.
    public static let manifestName = "manifest"
    /// The signature's file name in ``directoryName``.
    public static let signatureName = "manifest.sig"
    /// The one format this version reads.
    public static let formatName = "backstop-manifest/1"
    /// The largest manifest or signature file read, in bytes.
    static let maxManifestBytes = 64 << 20

    /// One regular file.
    public struct File: Codable, Sendable, Equatable {
        public var path: String
        /// Bytes.
        public var size: Int64
        /// SHA-256 of the contents, lowercase hex.
        public var sha256: String
        /// Whether any execute bit is set; absent means false.
        public var executable: Bool?
    }

    /// One symlink, with its target as stored (relative, inside the tree).
    public struct Symlink: Codable, Sendable, Equatable {
        public var path: String
        public var target: String
    }

    /// Always ``formatName``.
    public var format: String
    public var files: [File]
    public var symlinks: [Symlink]?
    /// Directories that hold no listed entry (those that do are implied).
    public var directories: [String]?

    /// The manifest of a scanned tree: every file and symlink, and the directories no entry implies.
    init(_ inventory: TreeInventory) {
        format = Self.formatName
        files = []
        var links: [Symlink] = []
        var directories: [String] = []
        for (path, entry) in inventory.entries {
            switch entry {
            case .file(let executable, let size, let sha256):
                files.append(File(path: path, size: size, sha256: sha256, executable: executable ? true : nil))
            case .symlink(let target): links.append(Symlink(path: path, target: target))
            case .directory: directories.append(path)
            }
        }
        symlinks = links.isEmpty ? nil : links
        let implied = Set(Self.parents(of: files.map(\.path) + links.map(\.path)).map { Array($0.utf8) })
        let empty = directories.filter { !implied.contains(Array($0.utf8)) }
        self.directories = empty.isEmpty ? nil : empty
    }

    /// The manifest as written: pretty-printed JSON with sorted keys, ending in a newline.
    public var encoded: Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return (try? encoder.encode(self)).map { $0 + Data("\n".utf8) } ?? Data()
    }

    /// Reads a manifest.
    /// - Throws: ``StoreError/badManifest(_:)`` for JSON that is not a manifest of ``formatName``,
    ///   a path that is not relative and normalized, or a path listed twice.
    public static func parse(_ data: Data) throws(StoreError) -> BundleManifest {
        let manifest: BundleManifest
        do { manifest = try JSONDecoder().decode(BundleManifest.self, from: data) } catch {
            throw .badManifest("not a manifest: \(Self.reason(error))")
        }
        guard manifest.format == formatName else {
            throw .badManifest("format \"\(manifest.format)\" is not supported (expected \"\(formatName)\")")
        }
        var seen = Set<String>()
        let paths = manifest.files.map(\.path) + (manifest.symlinks ?? []).map(\.path) + (manifest.directories ?? [])
        for path in paths {
            let normalized = try? BundleArchive.normalizedPath(path)
            guard normalized == path, !path.isEmpty, !path.hasPrefix(directoryName + "/"), path != directoryName else {
                throw .badManifest("\"\(EntryName.escaped(path))\" is not a relative, normalized path of the content")
            }
            guard seen.insert(path).inserted else { throw .badManifest("\"\(EntryName.escaped(path))\" is listed twice") }
        }
        return manifest
    }

    /// Checks that `inventory` holds exactly what the manifest lists.
    /// - Throws: ``StoreError/manifestMismatch(_:)`` naming the first entry that differs.
    func check(_ inventory: TreeInventory) throws(StoreError) {
        // Keyed by the names' bytes: Swift's String equality would take two spellings of
        // one Unicode text (NFC, NFD) for the same name, and the file system does not.
        var expected: [[UInt8]: (path: String, entry: TreeInventory.Entry)] = [:]
        func list(_ path: String, _ entry: TreeInventory.Entry) { expected[Array(path.utf8)] = (path, entry) }
        for file in files {
            list(file.path, .file(executable: file.executable ?? false, size: file.size, sha256: file.sha256.lowercased()))
        }
        for link in symlinks ?? [] { list(link.path, .symlink(target: link.target)) }
        for directory in (directories ?? []) + Self.parents(of: files.map(\.path) + (symlinks ?? []).map(\.path)) {
            list(directory, .directory)
        }
        for (path, entry) in inventory.entries {
            guard let listed = expected.removeValue(forKey: Array(path.utf8)) else {
                throw .manifestMismatch("\(EntryName.escaped(path)) is in the bundle but not in the manifest")
            }
            let sameTarget: Bool
            if case .symlink(let target) = entry, case .symlink(let listedTarget) = listed.entry {
                sameTarget = Array(target.utf8) == Array(listedTarget.utf8)
            } else {
                sameTarget = listed.entry == entry
            }
            guard sameTarget else {
                throw .manifestMismatch("\(EntryName.escaped(path)) is \(Self.describe(entry)) in the bundle but \(Self.describe(listed.entry)) in the manifest")
            }
        }
        if let missing = expected.values.map(\.path).sorted().first {
            throw .manifestMismatch("\(EntryName.escaped(missing)) is in the manifest but not in the bundle")
        }
    }

    /// The directories that hold `paths`, as `/`-joined prefixes of each.
    private static func parents(of paths: [String]) -> [String] {
        var seen = Set<[UInt8]>()
        var result: [String] = []
        for path in paths {
            var components = path.split(separator: "/").dropLast()
            while !components.isEmpty {
                let parent = components.joined(separator: "/")
                if seen.insert(Array(parent.utf8)).inserted { result.append(parent) }
                components.removeLast()
            }
        }
        return result
    }

    private static func describe(_ entry: TreeInventory.Entry) -> String {
        switch entry {
        case .directory: return "a directory"
        case .file(let executable, let size, let sha256):
            return "a\(executable ? "n executable" : "") file of \(size) bytes with sha256 \(sha256.prefix(16))…"
        case .symlink(let target): return "a symlink to \(EntryName.escaped(target))"
        }
    }

    private static func reason(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing key \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "wrong type at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        default: return "invalid JSON"
        }
    }
}

/// Ed25519 keys in the PEM forms OpenSSL reads and writes: a public key as
/// SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`, RFC 8410 section 4), a private
/// key as PKCS #8 (`-----BEGIN PRIVATE KEY-----`, RFC 8410 section 7).
public enum SigningKey {
    /// id-Ed25519, RFC 8410.
    static let ed25519: ASN1ObjectIdentifier = [1, 3, 101, 112]

    /// Reads a public key.
    /// - Throws: ``StoreError/badKey(_:)`` when the text is not an Ed25519 public key in PEM.
    public static func publicKey(pem: String) throws(StoreError) -> Curve25519.Signing.PublicKey {
        do {
            let document = try PEMDocument(pemString: pem)
            guard document.discriminator == "PUBLIC KEY" else { throw StoreError.badKey("a \(document.discriminator), not a PUBLIC KEY") }
            let bytes = try DER.sequence(try DER.parse(document.derBytes), identifier: .sequence) { nodes in
                let algorithm = try DER.sequence(nodes.next() ?? { throw ASN1Error.invalidASN1Object(reason: "empty") }(), identifier: .sequence) {
                    try ASN1ObjectIdentifier(derEncoded: &$0)
                }
                guard algorithm == ed25519 else { throw StoreError.badKey("not an Ed25519 key (algorithm \(algorithm))") }
                return try ASN1BitString(derEncoded: &nodes).bytes
            }
            return try Curve25519.Signing.PublicKey(rawRepresentation: bytes)
        } catch let error as StoreError {
            throw error
        } catch {
            throw .badKey("not an Ed25519 public key in PEM (-----BEGIN PUBLIC KEY-----, as openssl pkey -pubout writes it)")
        }
    }

    /// Reads a private key.
    /// - Throws: ``StoreError/badKey(_:)`` when the text is not an Ed25519 private key in PKCS #8 PEM.
    public static func privateKey(pem: String) throws(StoreError) -> Curve25519.Signing.PrivateKey {
        do {
            let document = try PEMDocument(pemString: pem)
            guard document.discriminator == "PRIVATE KEY" else { throw StoreError.badKey("a \(document.discriminator), not a PRIVATE KEY") }
            let seed = try DER.sequence(try DER.parse(document.derBytes), identifier: .sequence) { nodes in
                _ = try Int(derEncoded: &nodes)
                let algorithm = try DER.sequence(nodes.next() ?? { throw ASN1Error.invalidASN1Object(reason: "empty") }(), identifier: .sequence) {
                    try ASN1ObjectIdentifier(derEncoded: &$0)
                }
                guard algorithm == ed25519 else { throw StoreError.badKey("not an Ed25519 key (algorithm \(algorithm))") }
                let wrapped = try ASN1OctetString(derEncoded: &nodes).bytes
                while nodes.next() != nil {}  // optional attributes and public key (PKCS #8 v2)
                return try ASN1OctetString(derEncoded: try DER.parse(wrapped)).bytes
            }
            return try Curve25519.Signing.PrivateKey(rawRepresentation: seed)
        } catch let error as StoreError {
            throw error
        } catch {
            throw .badKey("not an Ed25519 private key in PEM (-----BEGIN PRIVATE KEY-----, as openssl genpkey -algorithm ed25519 writes it)")
        }
    }

    /// A public key in PEM (SubjectPublicKeyInfo), as `openssl pkey -pubout` writes it.
    public static func pem(_ key: Curve25519.Signing.PublicKey) -> String {
        var serializer = DER.Serializer()
        try? serializer.appendConstructedNode(identifier: .sequence) { spki in
            try spki.appendConstructedNode(identifier: .sequence) { try $0.serialize(ed25519) }
            try spki.serialize(ASN1BitString(bytes: ArraySlice(key.rawRepresentation)))
        }
        return PEMDocument(type: "PUBLIC KEY", derBytes: serializer.serializedBytes).pemString + "\n"
    }
}

/// The trusted public keys of an agent: every `*.pem` file in its `trusted_keys` directory.
public struct TrustedKeys {
    /// Keys by file name.
    public private(set) var keys: [(name: String, key: Curve25519.Signing.PublicKey)] = []
    /// Files that could not be read as keys, with the reason.
    public private(set) var problems: [String] = []

    /// Reads the keys in `directory`; a missing directory holds none.
    public init(directory: String) {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".pem") }.sorted()
        for name in names {
            let path = directory + "/" + name
            do throws(StoreError) {
                guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                    throw .badKey("cannot be read")
                }
                keys.append((name, try SigningKey.publicKey(pem: text)))
            } catch {
                problems.append("\(path): \(error)")
            }
        }
    }

    /// The name of the key whose signature `signature` is over `manifest`, nil when none is.
    public func signer(of manifest: Data, signature: Data) -> String? {
        keys.first { $0.key.isValidSignature(signature, for: manifest) }?.name
    }
}

extension BundleManifest {
    /// The manifest of the content directory `directory`, its ``directoryName`` left out.
    /// - Throws: ``StoreError`` for a path that is no directory, an entry content may not
    ///   hold, or an I/O error.
    public static func make(directory: String) throws(StoreError) -> BundleManifest {
        var info = stat()
        guard stat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw .notADirectory(directory)
        }
        return BundleManifest(try TreeInventory.scan(directory, excluding: directoryName))
    }

    /// Refuses a ``directoryName`` below the top of a bundle: the top of an archive must be
    /// the content itself (`tar -C DIR .`), and a wrapped one would otherwise be staged
    /// with its manifest as content.
    /// - Throws: ``StoreError/refusedEntry(path:reason:)``.
    static func checkNotNested(_ relative: String, of path: String) throws(StoreError) {
        let components = relative.split(separator: "/")
        guard components.dropFirst().contains(Substring(directoryName)) else { return }
        throw .refusedEntry(
            path: path,
            reason: "is a \(directoryName) below the top of the bundle; the top must be the content itself (make the archive with tar -C DIR .)")
    }

    /// Writes the manifest of `directory` into its ``directoryName`` and, with `key`, the
    /// signature next to it; without one, a signature left from before is removed (it
    /// would no longer match).
    /// - Returns: the manifest written.
    /// - Throws: ``StoreError`` from ``make(directory:)``, or an I/O error writing the files.
    public static func write(into directory: String, signingKey key: Curve25519.Signing.PrivateKey?) throws(StoreError) -> BundleManifest {
        let manifest = try make(directory: directory)
        let metadata = directory + "/" + directoryName
        let data = manifest.encoded
        try ContentStore.syscall(metadata, "write") {
            try DurableFile.makeDirectories(metadata)
            try DurableFile.write(data, to: metadata + "/" + manifestName, mode: [.ownerReadWrite, .groupRead, .otherRead])
            if let key {
                try DurableFile.write(
                    try key.signature(for: data), to: metadata + "/" + signatureName, mode: [.ownerReadWrite, .groupRead, .otherRead])
            } else if unlink(metadata + "/" + signatureName) != 0, errno != ENOENT {
                throw Errno(rawValue: errno)
            }
        }
        return manifest
    }
}
