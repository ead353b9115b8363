import FuzzDriver

/// The program's entry (SwiftPM names an executable's main `<module>_main`): fuzzes `UntrustedInput.targets["configuration"]`.
@_cdecl("fuzz_configuration_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    FuzzDriver.run("configuration", argc, argv)
}
