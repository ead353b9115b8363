import BackstopCore
import Foundation
import Testing

/// The fuzz corpus replayed: the seeds, and every input a fuzzer once crashed on
/// (`crash-*`), which must now be read or refused cleanly. Configuration files go
/// through `backstopd --check-config` and `backstopctl`, as an operator's would, and so
/// do the inputs on which TOMLKit's parser aborts (`Fuzz/Aborts/configuration`), which
/// the programs contain by parsing in a child first; this test process does not.
@Suite(.enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct FuzzCorpusTests {
    static let corpus = Paths.repository + "/Fuzz/Corpus"

    static func inputs(_ target: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: corpus + "/" + target).sorted().map { corpus + "/" + target + "/" + $0 }
    }

    @Test("every fuzz target has a seed corpus")
    func corpusPerTarget() throws {
        #expect(try FileManager.default.contentsOfDirectory(atPath: Self.corpus).sorted() == UntrustedInput.targets.keys.sorted())
        for target in UntrustedInput.targets.keys { #expect(try !Self.inputs(target).isEmpty, "\(target)") }
    }

    @Test("state files, control messages and bundles in the corpus are read or refused without a crash", arguments: ["state", "control", "bundle"])
    func replayInProcess(_ target: String) throws {
        for input in try Self.inputs(target) {
            UntrustedInput.targets[target]!(try Data(contentsOf: URL(fileURLWithPath: input)))
        }
    }

    @Test(
        "the corpus's hostile bundles are staged as they are or refused naming the entry safely, with the fuzz target's limits",
        arguments: [
            ("sparse-gnu.tar", nil), ("sparse-pax.tar", nil),
            ("implied-directories.tar", "the bundle holds more than max_files = 256 entries (at b008/"),
            ("control-character.tar", "bad\\x1b[2Jname has a control character"),
            ("not-utf8.tar", "lat\\xe9.conf has a name that is not valid UTF-8"),
        ] as [(String, String?)])
    func hostileBundles(_ name: String, refusal expected: String?) throws {
        let directory = NSTemporaryDirectory() + "backstop-corpus-" + UUID().uuidString
        defer { ContentStore.removeTree(directory) }
        let store = ContentStore(stateDirectory: directory, agent: "demo")
        var rules = StagingRules()
        rules.maxBundleBytes = 1 << 20
        rules.maxFiles = 256
        let bundle = try OpenBundle.open(Self.corpus + "/bundle/" + name)
        defer { bundle.close() }
        switch Result(catching: { () throws(StoreError) in try store.stage(from: bundle, id: "v1", existing: [], rules: rules, at: Date()) }) {
        case .success(let record):
            #expect(expected == nil, "staged, expected a refusal containing \(expected ?? "")")
            // A fully sparse file of 512 KiB: all of it, zeros.
            #expect(record.totalBytes == 512 << 10)
            #expect(try Data(contentsOf: URL(fileURLWithPath: store.path(of: "v1") + "/hole")) == Data(count: 512 << 10))
        case .failure(let error):
            #expect(error.description.contains(expected ?? "(staged)"), "\(error.description)")
            #expect(!error.description.unicodeScalars.contains { $0.value < 0x20 })
        }
    }

    @Test("every configuration in the corpus is accepted or refused with a message by backstopd --check-config and backstopctl; the crashes are syntax errors")
    func replayConfigurations() throws {
        let aborts = try FileManager.default.contentsOfDirectory(atPath: Paths.repository + "/Fuzz/Aborts/configuration")
            .sorted().map { Paths.repository + "/Fuzz/Aborts/configuration/" + $0 }
        #expect(!aborts.isEmpty)
        for input in aborts {
            let check = try Command.run(Paths.binary("backstopd"), ["--check-config", "--config", input])
            #expect(check.status == 1 && check.error.contains("makes TOMLKit's parser abort"), "\(input): \(check)")
            let status = try Command.run(Paths.binary("backstopctl"), ["status", "--config", input])
            #expect(status.status == 4 && status.error.contains("makes TOMLKit's parser abort"), "\(input): \(status)")
        }
        for input in try Self.inputs("configuration") {
            let name = (input as NSString).lastPathComponent
            let check = try Command.run(Paths.binary("backstopd"), ["--check-config", "--config", input])
            #expect(check.status == 0 || check.status == 1, "\(name): \(check)")
            #expect(!check.error.contains("Program crashed"), "\(name): \(check.error)")
            let status = try Command.run(Paths.binary("backstopctl"), ["status", "--config", input])
            #expect([0, 1, 3, 4].contains(status.status), "\(name): \(status)")
            if name.hasPrefix("crash-") {
                #expect(check.status == 1 && check.error.hasPrefix("backstopd: \(input)") && check.error.contains("TOML syntax"), "\(name): \(check.error)")
            }
        }
    }
}
