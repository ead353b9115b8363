import BackstopCore
import CFuzzer
import Foundation

/// libFuzzer's target: one input, as `UntrustedInput.targets["configuration"]` reads it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    UntrustedInput.targets["configuration"]!(start.map { Data(bytes: $0, count: count) } ?? Data())
    return 0
}

/// The program's entry (SwiftPM names an executable's main `<module>_main`): hands
/// over to libFuzzer's driver, which reads libFuzzer's usual options.
@_cdecl("fuzz_configuration_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { fuzz($0, $1) }
}
