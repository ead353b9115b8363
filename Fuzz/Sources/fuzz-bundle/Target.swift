import FuzzDriver

/// The program's entry (SwiftPM names an executable's main `<module>_main`): fuzzes `UntrustedInput.targets["bundle"]`.
@_cdecl("fuzz_bundle_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    FuzzDriver.run("bundle", argc, argv)
}
