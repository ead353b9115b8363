import FuzzDriver

/// The program's entry (SwiftPM names an executable's main `<module>_main`): fuzzes `UntrustedInput.targets["state"]`.
@_cdecl("fuzz_state_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    FuzzDriver.run("state", argc, argv)
}
