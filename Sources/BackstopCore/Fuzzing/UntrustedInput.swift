import Foundation

/// The readers of input Backstop does not control, each run on arbitrary bytes as the
/// daemon runs it: the libFuzzer targets (`make fuzz`, `Fuzz/`) call these, and the
/// regression tests replay the corpus (`Fuzz/Corpus/<target>/`) through them. Each must
/// return (accepting or refusing the input), never crash or hang.
public enum UntrustedInput {
    /// The fuzz targets, by the name of their corpus directory.
    public static let targets: [String: @Sendable (Data) -> Void] = [
        "configuration": configuration,
        "state": stateFiles,
        "control": controlMessage,
        "bundle": bundle,
    ]

    /// `backstop.toml`: read as UTF-8, parsed and checked as `backstopd --check-config` does.
    public static func configuration(_ data: Data) {
        guard let text = String(data: data, encoding: .utf8) else { return }
        if let configuration = try? Configuration.parse(text, path: "backstop.toml") {
            _ = configuration.warnings
        }
    }

    /// `state.json` and `boots.json`: decoded, and a decoded state repaired and summarized
    /// as the daemon does at startup.
    public static func stateFiles(_ data: Data) {
        if var state = try? AgentStateFile.decode(data, path: "state.json") {
            _ = state.ledger.repair(isValidID: ContentStore.isValidVersionID)
            _ = (state.ledger.knownGood, state.ledger.candidate, state.ledger.quarantined, state.ledger.garbage(keeping: 1))
        }
        if let log = try? BootLog.decode(data, path: "boots.json") {
            _ = log.boots.map { log.consecutiveFailed(before: $0.id) }
        }
    }

    /// One control-socket message: the Varlink call, then the parameters of every method.
    public static func controlMessage(_ data: Data) {
        guard let call = try? Varlink.Call.decode(data) else { return }
        _ = try? ManagerInterface.decode(ManagerInterface.StageParameters.self, call)
        _ = try? ManagerInterface.decode(ManagerInterface.VersionParameters.self, call)
        _ = try? ManagerInterface.decode(ManagerInterface.RollbackParameters.self, call)
        _ = try? ManagerInterface.decode(ManagerInterface.OptionalAgentParameter.self, call)
        _ = try? ManagerInterface.decode(ManagerInterface.AgentParameter.self, call)
    }

    /// A content bundle: the bytes as a tar archive staged into a scratch store (then
    /// removed), as a manifest, and as a PEM key.
    public static func bundle(_ data: Data) {
        _ = try? BundleManifest.parse(data)
        _ = try? SigningKey.publicKey(pem: String(decoding: data, as: UTF8.self))
        _ = try? SigningKey.privateKey(pem: String(decoding: data, as: UTF8.self))
        let tree = scratch + "/tree"
        ContentStore.removeTree(tree)
        guard mkdir(scratch, 0o700) == 0 || errno == EEXIST, mkdir(tree, 0o700) == 0 else { return }
        defer { ContentStore.removeTree(tree) }
        do throws(StoreError) {
            let metadata = try BundleArchive(source: .memory(Array(data)), destination: tree, rules: scratchRules).extract()
            let inventory = try TreeInventory.scan(tree)
            _ = try ContentStore.checkSignature(metadata, of: inventory, rules: scratchRules)
            _ = inventory.summary
        } catch {
            _ = error.description
        }
    }

    /// Small limits, so that one input stays fast.
    private static let scratchRules: StagingRules = {
        var rules = StagingRules()
        rules.maxBundleBytes = 1 << 20
        rules.maxFiles = 256
        rules.trustedKeysDirectory = "/nonexistent"
        return rules
    }()

    /// A directory of this process on a memory file system when there is one.
    private static let scratch: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        return base + "/backstop-fuzz-\(getpid())"
    }()
}
