import FuzzDriver

/// The program's entry (SwiftPM names an executable's main `<module>_main`): fuzzes `UntrustedInput.targets["control"]`.
@_cdecl("fuzz_control_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    FuzzDriver.run("control", argc, argv)
}
