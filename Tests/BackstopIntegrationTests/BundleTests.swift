import BackstopCore
import Foundation
import Testing

/// A store for agent "demo" in a temporary directory, a copy of the v1-good sample to
/// bundle, and a directory of trusted keys.
struct BundleFixture {
    let directory: String
    let store: ContentStore
    let content: String
    let keys: String

    init() throws {
        directory = NSTemporaryDirectory() + "backstop-bundle-" + UUID().uuidString
        store = ContentStore(stateDirectory: directory + "/state", agent: "demo")
        content = directory + "/content"
        keys = directory + "/keys"
        try FileManager.default.createDirectory(atPath: keys, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Paths.sample("v1-good"), toPath: content)
    }

    func remove() { ContentStore.removeTree(directory) }

    /// Rules that trust the keys in `keys`.
    func rules(requireSignature: Bool = false, maxBundleBytes: Int64? = nil, maxFiles: Int? = nil) -> StagingRules {
        var rules = StagingRules()
        rules.trustedKeysDirectory = keys
        rules.requireSignature = requireSignature
        if let maxBundleBytes { rules.maxBundleBytes = maxBundleBytes }
        if let maxFiles { rules.maxFiles = maxFiles }
        return rules
    }

    /// Stages the bundle at `source` as backstopd stages one backstopctl sent: opened, copied through its descriptor, closed.
    func stage(_ source: String, as id: String? = nil, rules: StagingRules? = nil) throws(StoreError) -> VersionRecord {
        let bundle = try OpenBundle.open(source)
        defer { bundle.close() }
        return try store.stage(from: bundle, id: id, existing: [], rules: rules ?? self.rules(), at: Date())
    }

    /// Stages and returns the refusal, recording an issue when staging succeeds.
    func refusal(_ source: String, rules: StagingRules? = nil, sourceLocation: SourceLocation = #_sourceLocation) -> StoreError? {
        do {
            let record = try stage(source, rules: rules)
            Issue.record("staging was expected to fail, got version \(record.id)", sourceLocation: sourceLocation)
            return nil
        } catch {
            return error
        }
    }

    /// Whether the store holds no version and no staging leftover.
    var storeIsEmpty: Bool {
        let fileManager = FileManager.default
        return ((try? fileManager.contentsOfDirectory(atPath: store.versionsDirectory)) ?? []).isEmpty
            && ((try? fileManager.contentsOfDirectory(atPath: store.stagingDirectory)) ?? []).isEmpty
    }

    /// Makes an Ed25519 key pair with openssl: the private key's path; the public key is
    /// trusted (put in `keys`) when asked.
    func makeKey(_ name: String, trusted: Bool) throws -> String {
        let key = directory + "/" + name + ".key"
        try run("/usr/bin/openssl", "genpkey", "-algorithm", "ed25519", "-out", key)
        let publicKey = (trusted ? keys : directory) + "/" + name + ".pem"
        try run("/usr/bin/openssl", "pkey", "-in", key, "-pubout", "-out", publicKey)
        return key
    }

    @discardableResult
    func run(_ program: String, _ arguments: String..., expectFailure: Bool = false) throws -> CommandResult {
        try run(program, arguments: arguments, expectFailure: expectFailure)
    }

    @discardableResult
    func run(_ program: String, arguments: [String], expectFailure: Bool = false) throws -> CommandResult {
        let result = try Command.run(program, arguments)
        if (result.status != 0) != expectFailure {
            Issue.record("\(program) \(arguments.joined(separator: " ")) exited \(result.status): \(result.error)")
        }
        return result
    }

    /// Builds a tar archive with Python's tarfile from `members`, a Python list of
    /// (name, type, extra) tuples: type "file" (extra: contents), "dir", "symlink" and
    /// "hardlink" (extra: target), "chr", "blk", "fifo"; a mode may follow.
    func craftedArchive(_ members: String, compression: String = "") throws -> String {
        let path = directory + "/crafted-" + UUID().uuidString + ".tar"
        let script = """
            import io, sys, tarfile
            members = \(members)
            with tarfile.open(sys.argv[1], "w:\(compression)") as archive:
                for name, kind, extra, *mode in members:
                    info = tarfile.TarInfo(name)
                    info.mode = mode[0] if mode else 0o644
                    data = None
                    if kind == "file":
                        data = extra.encode() if isinstance(extra, str) else extra
                        info.size = len(data)
                    elif kind == "dir": info.type = tarfile.DIRTYPE; info.mode = mode[0] if mode else 0o755
                    elif kind == "symlink": info.type = tarfile.SYMTYPE; info.linkname = extra
                    elif kind == "hardlink": info.type = tarfile.LNKTYPE; info.linkname = extra
                    elif kind == "chr": info.type = tarfile.CHRTYPE; info.devmajor = 1; info.devminor = 3
                    elif kind == "blk": info.type = tarfile.BLKTYPE; info.devmajor = 7; info.devminor = 0
                    elif kind == "fifo": info.type = tarfile.FIFOTYPE
                    archive.addfile(info, io.BytesIO(data) if data is not None else None)
            """
        try run("/usr/bin/python3", "-c", script, path)
        return path
    }
}

@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: device nodes and setuid bits in bundles are made as root"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct BundleTests {
    @Test("a tar archive, plain or gzip, xz or zstd, stages to the same version as its directory")
    func archivesStage() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        try Data("rule ü\n".utf8).write(to: URL(fileURLWithPath: fixture.content + "/règles-ü.conf"))
        let fromDirectory = try fixture.stage(fixture.content, as: "dir")
        for (flag, suffix) in [("-cf", "tar"), ("-czf", "tar.gz"), ("-cJf", "tar.xz"), ("--zstd -cf", "tar.zst")] {
            let archive = fixture.directory + "/bundle." + suffix
            let arguments = flag.split(separator: " ").map(String.init) + [archive, "-C", fixture.content, "."]
            try #require(try Command.run("/usr/bin/tar", arguments).status == 0)
            let record = try fixture.stage(archive, as: suffix.replacingOccurrences(of: ".", with: "-"))
            #expect(record.digest == fromDirectory.digest, "\(suffix)")
            #expect(record.fileCount == 4)
            try fixture.store.verify(record)
        }
        // The copy is read-only, owned by root, whatever the archive said.
        let file = fixture.store.path(of: "tar-zst") + "/channel-100.conf"
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect(attributes[.posixPermissions] as? Int == 0o444)
        #expect(attributes[.ownerAccountID] as? Int == 0)
    }

    @Test(
        "a hostile archive entry is refused, naming it, and nothing is left in the store",
        arguments: [
            ("[('/etc/backstop-evil', 'file', 'x')]", "/etc/backstop-evil is an absolute path"),
            ("[('../evil', 'file', 'x')]", "../evil has a \"..\" component"),
            ("[('rules/../../evil', 'file', 'x')]", "rules/../../evil has a \"..\" component"),
            ("[('a', 'file', 'x'), ('b', 'hardlink', 'a')]", "b is a hard link"),
            ("[('null', 'chr', None)]", "null is a character device"),
            ("[('disk', 'blk', None)]", "disk is a block device"),
            ("[('pipe', 'fifo', None)]", "pipe is a FIFO"),
            ("[('tool', 'file', 'x', 0o4755)]", "tool has the setuid or setgid bit"),
            ("[('shared', 'dir', None, 0o2775)]", "shared has the setuid or setgid bit"),
            ("[('etc', 'symlink', '/etc')]", "etc is a symlink to /etc, which leaves the content tree"),
            ("[('up', 'symlink', '..')]", "up is a symlink to .., which leaves the content tree"),
            ("[('s', 'symlink', '.'), ('x', 'symlink', 's/..')]", "x is a symlink to s/.., which leaves the content tree"),
            ("[('l', 'symlink', 'sub'), ('l/file', 'file', 'x')]", "l appears twice in the bundle"),
            ("[('a', 'file', 'x'), ('a', 'file', 'y')]", "a appears twice in the bundle"),
            ("[('a', 'dir', None), ('a', 'file', 'y')]", "a appears twice in the bundle"),
            ("[('evil\\nname', 'file', 'x')]", "has a control character in its name or target"),
            ("[('.backstop/hook.sh', 'file', 'x')]", ".backstop/hook.sh is not a manifest or signature"),
            ("[('rules-v1/.backstop/manifest', 'file', '{}')]", "is a .backstop below the top of the bundle; the top must be the content itself"),
            ("[('.', 'file', 'x' * 4096)]", ". names the top of the bundle, which must be a plain directory"),
            ("[('./', 'fifo', None)]", "./ names the top of the bundle, which must be a plain directory"),
            ("[('.', 'dir', None, 0o4755)]", "names the top of the bundle, which must be a plain directory"),
            ("[('x' * 300, 'file', 'x')]", "has a name or path longer than the file system allows"),
            ("[('/'.join(['d' * 200] * 25) + '/f', 'file', 'x')]", "has a name or path longer than the file system allows"),
        ])
    func hostileEntries(members: String, expected: String) throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let archive = try fixture.craftedArchive("[('ok.conf', 'file', 'fine')] + " + members)
        let refusal = fixture.refusal(archive)
        #expect(refusal?.description.contains(expected) == true, "\(refusal?.description ?? "staged")")
        #expect(fixture.storeIsEmpty)
    }

    @Test("a directory with a hard link, a setuid file or a control character in a name is refused")
    func hostileDirectoryEntries() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let outside = fixture.directory + "/secret"
        try Data("not content\n".utf8).write(to: URL(fileURLWithPath: outside))
        #expect(link(outside, fixture.content + "/linked") == 0)
        #expect(fixture.refusal(fixture.content)?.description == "\(fixture.content)/linked is a hard link; the bundle is refused")
        #expect(unlink(fixture.content + "/linked") == 0)

        try Data("#!/bin/sh\n".utf8).write(to: URL(fileURLWithPath: fixture.content + "/tool"))
        #expect(chmod(fixture.content + "/tool", 0o4755) == 0)
        #expect(fixture.refusal(fixture.content)?.description.hasSuffix("/tool has the setuid or setgid bit; the bundle is refused") == true)
        #expect(unlink(fixture.content + "/tool") == 0)

        try Data().write(to: URL(fileURLWithPath: fixture.content + "/bad\u{1b}[2Jname"))
        #expect(fixture.refusal(fixture.content)?.description.contains("has a control character") == true)
        #expect(unlink(fixture.content + "/bad\u{1b}[2Jname") == 0)

        try FileManager.default.createDirectory(atPath: fixture.content + "/.backstop", withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: fixture.content + "/.backstop/notes.txt"))
        #expect(fixture.refusal(fixture.content)?.description.hasSuffix(
            "/.backstop/notes.txt is not a manifest or signature; .backstop/ holds only those; the bundle is refused") == true)
        #expect(fixture.storeIsEmpty)

        let missing = try fixture.run(Paths.binary("backstopctl"), "manifest", fixture.directory + "/absent", expectFailure: true)
        #expect(missing.error == "backstopctl: \(fixture.directory)/absent does not exist\n")
    }

    @Test("max_files and max_bundle_bytes stop a bundle while it is read, a decompression bomb included")
    func limits() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let tooMany = fixture.refusal(fixture.content, rules: fixture.rules(maxFiles: 2))
        #expect(tooMany?.description.hasPrefix("the bundle holds more than max_files = 2 entries") == true)
        let tooLarge = fixture.refusal(fixture.content, rules: fixture.rules(maxBundleBytes: 100))
        #expect(tooLarge?.description.hasPrefix("the bundle holds more than max_bundle_bytes = 100 bytes") == true)

        // 256 MiB of zeros, about 250 KiB compressed: refused at the first MiB past the limit.
        let bomb = try fixture.craftedArchive("[('zeros', 'file', bytes(256 << 20))]", compression: "gz")
        let size = try FileManager.default.attributesOfItem(atPath: bomb)[.size] as? Int ?? 0
        #expect(size < 1 << 20)
        let refusal = fixture.refusal(bomb, rules: fixture.rules(maxBundleBytes: 4 << 20))
        #expect(refusal?.description == "the bundle holds more than max_bundle_bytes = \(4 << 20) bytes (at zeros)")
        #expect(fixture.storeIsEmpty)
        #expect(try fixture.stage(bomb, rules: fixture.rules(maxBundleBytes: 256 << 20)).totalBytes == 256 << 20)
    }

    @Test("a manifest that does not match the tree is refused, naming the entry")
    func manifestMismatch() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        try fixture.run(Paths.binary("backstopctl"), "manifest", fixture.content)
        let file = fixture.content + "/channel-200.conf"
        let original = try Data(contentsOf: URL(fileURLWithPath: file))

        try Data("instance changed,1\n".utf8).write(to: URL(fileURLWithPath: file))
        #expect(fixture.refusal(fixture.content)?.description.hasPrefix(
            "the bundle does not match its manifest: channel-200.conf is a file of 19 bytes") == true)
        try original.write(to: URL(fileURLWithPath: file))

        try Data("x\n".utf8).write(to: URL(fileURLWithPath: fixture.content + "/extra.conf"))
        #expect(fixture.refusal(fixture.content)?.description
            == "the bundle does not match its manifest: extra.conf is in the bundle but not in the manifest")
        #expect(unlink(fixture.content + "/extra.conf") == 0)

        #expect(unlink(file) == 0)
        #expect(fixture.refusal(fixture.content)?.description
            == "the bundle does not match its manifest: channel-200.conf is in the manifest but not in the bundle")
        try original.write(to: URL(fileURLWithPath: file))

        try Data("{\"format\": \"backstop-manifest/2\", \"files\": []}".utf8)
            .write(to: URL(fileURLWithPath: fixture.content + "/.backstop/manifest"))
        #expect(fixture.refusal(fixture.content)?.description
            == "the bundle's manifest is invalid: format \"backstop-manifest/2\" is not supported (expected \"backstop-manifest/1\")")
        #expect(fixture.storeIsEmpty)

        try fixture.run(Paths.binary("backstopctl"), "manifest", fixture.content)
        let record = try fixture.stage(fixture.content)
        #expect(record.signedBy == nil)
        #expect(!FileManager.default.fileExists(atPath: fixture.store.path(of: record.id) + "/.backstop"))
    }

    @Test("backstopd with require_signature: backstopctl stage refuses an unsigned bundle with the reason, stages a signed archive, and content list names the key")
    func daemonRequiresSignature() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: "require_signature = true\ntrusted_keys = \"\(fixture.keys)\"")])
        defer { harness.cleanUp() }
        try harness.start()

        let unsigned = try harness.ctl("stage", "demo", fixture.content, "--version", "v1")
        #expect(unsigned.status == 1)
        #expect(unsigned.error.contains("require_signature is set and the bundle has no .backstop/manifest"), "\(unsigned.error)")
        #expect(harness.log.all.contains {
            $0.contains("Refused the operator request Stage") && $0.contains("require_signature is set") && $0.contains("version=v1")
        }, "the daemon's log says why")

        let vendor = try fixture.makeKey("vendor", trusted: true)
        try fixture.run(Paths.binary("backstopctl"), "sign", fixture.content, "--key", vendor)
        let archive = fixture.directory + "/signed.tar.gz"
        try fixture.run("/usr/bin/tar", "-czf", archive, "-C", fixture.content, ".")
        let signed = try harness.ctl("stage", "demo", archive, "--version", "v1", "--activate")
        #expect(signed.status == 0, "\(signed.error)")
        try harness.wait(for: "agent-ready")
        let listing = try harness.ctl("content", "list", "demo", "--no-legend").output
        #expect(listing.hasPrefix("* v1 ") && listing.contains(" vendor.pem"), "\(listing)")
    }

    @Test("a name spelled otherwise in Unicode (NFD for the NFC that was signed) does not match the manifest")
    func unicodeSpellings() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        try Data("rule\n".utf8).write(to: URL(fileURLWithPath: fixture.content + "/r\u{E9}gles.conf"))
        try fixture.run(Paths.binary("backstopctl"), "sign", fixture.content, "--key", try fixture.makeKey("vendor", trusted: true))
        let archive = fixture.directory + "/nfd.tar"
        let script = """
            import os, sys, tarfile, unicodedata
            with tarfile.open(sys.argv[2], "w") as archive:
                for root, dirs, files in os.walk(sys.argv[1]):
                    for name in files:
                        path = os.path.join(root, name)
                        archive.add(path, arcname=unicodedata.normalize("NFD", os.path.relpath(path, sys.argv[1])))
            """
        try fixture.run("/usr/bin/python3", "-c", script, fixture.content, archive)
        #expect(fixture.refusal(archive, rules: fixture.rules(requireSignature: true))?.description
            == "the bundle does not match its manifest: re\u{301}gles.conf is in the bundle but not in the manifest")
        #expect(fixture.storeIsEmpty)
    }

    @Test("two stagings of one id: the second is refused whatever finishes first, even over an empty version")
    func sameIDTwice() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let empty = fixture.directory + "/empty"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        // Both pass the check of known ids (a snapshot), as two requests racing would.
        let first = try fixture.stage(empty, as: "r")
        #expect(first.fileCount == 0)
        #expect(throws: StoreError.versionExists("r")) {
            try fixture.stage(fixture.content, as: "r")
        }
        try fixture.store.verify(first)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.store.stagingDirectory).isEmpty)
    }

    @Test("with require_signature, only a manifest signed by a trusted key is staged; OpenSSL and backstopctl sign interoperate")
    func signatures() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let required = fixture.rules(requireSignature: true)
        let metadata = fixture.content + "/.backstop"

        #expect(fixture.refusal(fixture.content, rules: required)?.description
            == "require_signature is set and the bundle has no .backstop/manifest")
        try fixture.run(Paths.binary("backstopctl"), "manifest", fixture.content)
        #expect(fixture.refusal(fixture.content, rules: required)?.description
            == "require_signature is set and the bundle has no .backstop/manifest.sig")

        let vendor = try fixture.makeKey("vendor", trusted: true)
        let stranger = try fixture.makeKey("stranger", trusted: false)
        #expect(fixture.refusal(fixture.content, rules: required)?.description.contains("no trusted key") == false)

        // Signed by a key the host does not trust: refused, required or not.
        try fixture.run(Paths.binary("backstopctl"), "sign", fixture.content, "--key", stranger)
        let untrusted = "the manifest's signature is not valid for any key in \(fixture.keys) (vendor.pem)"
        #expect(fixture.refusal(fixture.content, rules: required)?.description == untrusted)
        #expect(fixture.refusal(fixture.content)?.description == untrusted)

        // Signed by the vendor with backstopctl: OpenSSL verifies it, and it stages as a tar.zst too.
        try fixture.run(Paths.binary("backstopctl"), "sign", fixture.content, "--key", vendor)
        let verified = try fixture.run(
            "/usr/bin/openssl", "pkeyutl", "-verify", "-pubin", "-inkey", fixture.keys + "/vendor.pem", "-rawin",
            "-in", metadata + "/manifest", "-sigfile", metadata + "/manifest.sig")
        #expect(verified.output.contains("Signature Verified Successfully"))
        let archive = fixture.directory + "/signed.tar.zst"
        try fixture.run("/usr/bin/tar", "--zstd", "-cf", archive, "-C", fixture.content, ".")
        #expect(try fixture.stage(archive, as: "signed", rules: required).signedBy == "vendor.pem")

        // A signature made by OpenSSL over backstopctl's manifest is accepted.
        try fixture.run(
            "/usr/bin/openssl", "pkeyutl", "-sign", "-inkey", vendor, "-rawin", "-in", metadata + "/manifest",
            "-out", metadata + "/manifest.sig")
        #expect(try fixture.stage(fixture.content, as: "openssl", rules: required).signedBy == "vendor.pem")

        // A file changed after signing: the manifest no longer matches.
        try Data("instance changed,1\n".utf8).write(to: URL(fileURLWithPath: fixture.content + "/templates.conf"))
        #expect(fixture.refusal(fixture.content, rules: required)?.description.hasPrefix(
            "the bundle does not match its manifest: templates.conf") == true)
        // The manifest rewritten to match, keeping the old signature: the signature no longer holds.
        let signature = try Data(contentsOf: URL(fileURLWithPath: metadata + "/manifest.sig"))
        try fixture.run(Paths.binary("backstopctl"), "manifest", fixture.content)
        try signature.write(to: URL(fileURLWithPath: metadata + "/manifest.sig"))
        #expect(fixture.refusal(fixture.content, rules: required)?.description == untrusted)

        // No trusted key at all: required signatures cannot be checked, so nothing is staged.
        for name in ["vendor.pem"] { #expect(unlink(fixture.keys + "/" + name) == 0) }
        #expect(fixture.refusal(fixture.content, rules: required)?.description
            == "require_signature is set but \(fixture.keys) holds no trusted key (*.pem)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.store.versionsDirectory).sorted() == ["openssl", "signed"])
    }

    @Test("directories an archive only implies count against max_files: deep paths are refused before they fill the disk")
    func impliedDirectoriesCount() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        // 10 entries, each 31 directories deep that the archive does not list: 320 entries in all.
        let deep = try fixture.craftedArchive("[('b%03d/' % n + 'd/' * 30 + 'f', 'file', 'x') for n in range(10)]")
        let refusal = fixture.refusal(deep, rules: fixture.rules(maxFiles: 100))
        #expect(refusal?.description.hasPrefix("the bundle holds more than max_files = 100 entries (at b003/d/d/d") == true, "\(refusal?.description ?? "staged")")
        #expect(fixture.storeIsEmpty)

        // a/b/f is three entries, a and a/b implied.
        let shallow = try fixture.craftedArchive("[('a/b/f', 'file', 'x')]")
        #expect(fixture.refusal(shallow, rules: fixture.rules(maxFiles: 2))?.description.hasPrefix("the bundle holds more than max_files = 2 entries (at a/b)") == true)
        #expect(try fixture.stage(shallow, rules: fixture.rules(maxFiles: 3)).fileCount == 1)
    }

    @Test(
        "a sparse file in a GNU or pax sparse archive is staged with its full size, holes as zeros, and that size counts against max_bundle_bytes",
        arguments: [["--format=gnu"], ["--format=pax"], ["--format=pax", "--sparse-version=0.0"], ["--format=pax", "--sparse-version=0.1"]])
    func sparseFiles(_ format: [String]) throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let source = fixture.directory + "/sparse"
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        // All hole (truncate -s 1M), and data at 100 KiB in a file that ends in a hole.
        #expect(FileManager.default.createFile(atPath: source + "/hole", contents: nil))
        #expect(truncate(source + "/hole", 1 << 20) == 0)
        FileManager.default.createFile(atPath: source + "/data", contents: nil)
        let data = try FileHandle(forWritingTo: URL(fileURLWithPath: source + "/data"))
        try data.seek(toOffset: 100 << 10)
        try data.write(contentsOf: Data("data in the middle\n".utf8))
        try data.truncate(atOffset: 1 << 20)
        try data.close()
        let archive = fixture.directory + "/sparse.tar"
        try fixture.run("/usr/bin/tar", arguments: format + ["--sparse", "-cf", archive, "-C", source, "."])

        let fromDirectory = try fixture.stage(source, as: "directory")
        let record = try fixture.stage(archive, as: "archive")
        #expect(record.totalBytes == 2 << 20)
        #expect(record.digest == fromDirectory.digest)
        for name in ["hole", "data"] {
            #expect(try Data(contentsOf: URL(fileURLWithPath: fixture.store.path(of: "archive") + "/" + name))
                == Data(contentsOf: URL(fileURLWithPath: source + "/" + name)), "\(name)")
        }
        let refusal = fixture.refusal(archive, rules: fixture.rules(maxBundleBytes: 1 << 20))
        #expect(refusal?.description.hasPrefix("the bundle holds more than max_bundle_bytes = \(1 << 20) bytes") == true, "\(refusal?.description ?? "staged")")
    }

    @Test(
        "a name or symlink target that is not valid UTF-8 is refused, naming the entry with its bytes escaped, from a directory or an archive",
        arguments: [("name", "lat\\xe9.conf has a name that is not valid UTF-8"), ("target", "link is a symlink whose target is not valid UTF-8 (tg\\xff)")],
        [[], ["--format=gnu"], ["--format=pax"]])
    func invalidUTF8(_ entry: (kind: String, expected: String), archiveFormat: [String]) throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let script = """
            import os, sys
            top = os.fsencode(sys.argv[1])
            if sys.argv[2] == "name": open(top + b"/lat\\xe9.conf", "w").write("x")
            else: os.symlink(b"tg\\xff", top + b"/link")
            """
        try fixture.run("/usr/bin/python3", "-c", script, fixture.content, entry.kind)
        var bundle = fixture.content
        if archiveFormat.isEmpty {
            // backstopctl manifest (and sign) reads the directory the same way.
            let manifest = try fixture.run(Paths.binary("backstopctl"), "manifest", fixture.content, expectFailure: true)
            #expect(manifest.error.contains(entry.expected), "\(manifest.error)")
        } else {
            bundle = fixture.directory + "/bundle.tar"
            try fixture.run("/usr/bin/tar", arguments: archiveFormat + ["-cf", bundle, "-C", fixture.content, "."])
        }
        let refusal = fixture.refusal(bundle)
        #expect(refusal?.description.contains(entry.expected) == true, "\(refusal?.description ?? "staged")")
        #expect(refusal?.description.contains("\u{FFFD}") == false)
        #expect(fixture.storeIsEmpty)
    }

    @Test("control characters in a refused name are escaped in the refusal, in backstopctl's message and in the daemon's log")
    func controlCharactersEscaped() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        let archive = try fixture.craftedArchive("[('evil\\nname', 'file', 'x')]")
        let fromArchive = fixture.refusal(archive)?.description ?? ""
        #expect(fromArchive.contains("evil\\nname has a control character") && !fromArchive.contains("\n"), "\(fromArchive)")
        let c1 = try fixture.craftedArchive("[('c1\\x9b31m', 'file', 'x')]")
        #expect(fixture.refusal(c1)?.description.contains("c1\\u{9b}31m has a control character") == true)

        try Data().write(to: URL(fileURLWithPath: fixture.content + "/bad\u{1b}[2Jname"))
        let fromDirectory = fixture.refusal(fixture.content)?.description ?? ""
        #expect(fromDirectory.contains("/bad\\x1b[2Jname has a control character") && !fromDirectory.contains("\u{1b}"), "\(fromDirectory)")

        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        try harness.start()
        let staged = try harness.ctl("stage", "demo", fixture.content, "--version", "v1")
        #expect(staged.status == 1)
        #expect(staged.error.contains("/bad\\x1b[2Jname has a control character") && !staged.error.contains("\u{1b}"), "\(staged.error)")
        let logged = harness.log.all.filter { $0.contains("Refused the operator request Stage") }
        #expect(logged.count == 1 && logged.allSatisfy { $0.contains("bad\\x1b[2Jname") && !$0.contains("\u{1b}") }, "\(logged)")
        #expect(fixture.storeIsEmpty)
    }

    @Test("README's Python reproduces the tree digest of a staged version")
    func readmeDigestRecipe() throws {
        let fixture = try BundleFixture()
        defer { fixture.remove() }
        try FileManager.default.createDirectory(atPath: fixture.content + "/rules/empty", withIntermediateDirectories: true)
        #expect(symlink("../channel-100.conf", fixture.content + "/rules/current") == 0)
        try Data("#!/bin/sh\n".utf8).write(to: URL(fileURLWithPath: fixture.content + "/rules/hook b c.sh"))
        #expect(chmod(fixture.content + "/rules/hook b c.sh", 0o755) == 0)
        try fixture.run(Paths.binary("backstopctl"), "manifest", fixture.content)
        let recipe = try ReadmeSection("### The tree digest").block("python") + "import sys\nprint(tree_digest(sys.argv[1]))\n"
        let computed = try fixture.run("/usr/bin/python3", "-c", recipe, fixture.content)
        let staged = try fixture.stage(fixture.content)
        #expect(computed.output == staged.digest + "\n")
    }
}
