import CSystemd
import Foundation
import SystemPackage

/// The kernel's ID of the current boot.
public enum BootID {
    /// 32 lowercase hex digits, from `sd_id128_get_boot(3)`.
    /// - Throws: `Errno` when libsystemd cannot read `/proc/sys/kernel/random/boot_id`.
    public static func current() throws -> String {
        var id = sd_id128_t()
        try SystemdCall.check(sd_id128_get_boot(&id))
        return hex(id)
    }

    /// `id` in 32 lowercase hex digits, as journald names its directories and fields.
    static func hex(_ id: sd_id128_t) -> String {
        withUnsafeBytes(of: id.bytes) { bytes in
            bytes.map { String(format: "%02x", $0) }.joined()
        }
    }
}

/// The one place where libsystemd's return codes become errors.
public enum SystemdCall {
    /// libsystemd returns `-errno` on failure; turns that into a thrown `Errno`.
    /// - Returns: the non-negative result.
    /// - Throws: `Errno(-result)` when `result` is negative.
    @discardableResult
    public static func check(_ result: Int32) throws -> Int32 {
        guard result >= 0 else { throw Errno(rawValue: -result) }
        return result
    }
}
