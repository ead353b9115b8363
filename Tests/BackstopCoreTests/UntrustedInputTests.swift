import BackstopCore
import Foundation
import Testing

/// The fuzz corpus replayed through the readers of untrusted input: the seeds, and every
/// input a fuzzer once crashed on (`crash-*`), which must now be read or refused cleanly.
@Suite("Fuzz corpus")
struct UntrustedInputTests {
    static let corpus: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path + "/Fuzz/Corpus"
    }()

    @Test("every fuzz target has a seed corpus, and every input in it is read or refused without a crash")
    func replay() throws {
        let targets = try FileManager.default.contentsOfDirectory(atPath: Self.corpus).sorted()
        #expect(targets == UntrustedInput.targets.keys.sorted())
        for target in targets {
            let directory = Self.corpus + "/" + target
            let inputs = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
            #expect(!inputs.isEmpty, "\(target) has no seed")
            for input in inputs {
                let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + input))
                UntrustedInput.targets[target]!(data)
            }
        }
    }

    @Test("the crash found in the configuration parser is a syntax error now")
    func configurationCrash() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.corpus + "/configuration/crash-table-header-dollar.toml"))
        let text = try #require(String(data: data, encoding: .utf8))
        #expect(throws: ConfigurationError.self) { try Configuration.parse(text, path: "crash.toml") }
    }
}
