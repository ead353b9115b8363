import BackstopCore
import CFuzzer
import Foundation

/// The reader the running fuzz target feeds; set once by ``FuzzDriver/run(_:_:_:)`` before fuzzing starts.
nonisolated(unsafe) private var reader: (@Sendable (Data) -> Void)?

/// libFuzzer's target: one input, as the selected reader of ``UntrustedInput/targets`` reads it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    reader!(start.map { Data(bytes: $0, count: count) } ?? Data())
    return 0
}

/// What each fuzz executable's entry calls.
public enum FuzzDriver {
    /// Selects the reader `target` of ``UntrustedInput/targets`` and hands over to libFuzzer's
    /// driver, which reads libFuzzer's usual options from `argc`/`argv`.
    public static func run(_ target: String, _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
        reader = UntrustedInput.targets[target]!
        var count = argc
        var arguments = argv
        return LLVMFuzzerRunDriver(&count, &arguments) { fuzzOneInput($0, $1) }
    }
}
