import Glibc

/// The sensor's content interpreter, faithfully buggy: it evaluates as many
/// criteria as an instance supplies without checking that the template has
/// that many input fields.
final class ContentInterpreter {
    private let inputs: [String: GuardedInputArray]
    private let beforeOverrun: () -> Void

    /// Maps one guarded input array per template.
    ///
    /// - Parameter beforeOverrun: called just before a read past the end of
    ///   an input array. The real interpreter had no such knowledge; this is
    ///   instrumentation so benchmarks can timestamp the moment of failure.
    init(templates: [Template], beforeOverrun: @escaping () -> Void) throws(SystemCallError) {
        var inputs: [String: GuardedInputArray] = [:]
        for template in templates {
            inputs[template.name] = try GuardedInputArray(count: template.fieldCount)
        }
        self.inputs = inputs
        self.beforeOverrun = beforeOverrun
    }

    /// Evaluates `instance` against its template's current input and reports
    /// whether every criterion matched.
    ///
    /// Reads input field `i` for every value `i` of the instance, so an
    /// instance with more values than its template has fields reads the guard
    /// page and the process dies by SIGSEGV.
    func matches(_ instance: Instance) -> Bool {
        // The loader rejects instances of undeclared templates.
        let input = inputs[instance.templateName]!
        if instance.values.count > input.count {
            beforeOverrun()
        }
        // Count instead of short-circuiting so every field is read, just as
        // the real interpreter touched the 21st field whatever came before it.
        var matched = 0
        for (index, value) in instance.values.enumerated() where input[index] == fieldKey(value) {
            matched += 1
        }
        return matched == instance.values.count
    }

    /// The 64-bit key a criterion is compared with: FNV-1a of its UTF-8 bytes,
    /// standing in for the sensor's interned field values.
    private func fieldKey(_ value: String) -> UInt64 {
        value.utf8.reduce(0xcbf2_9ce4_8422_2325) { hash, byte in
            (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
    }
}

/// `count` 8-byte input slots that end exactly where a PROT_NONE guard page
/// begins, so reading slot `count` faults deterministically instead of
/// silently returning whatever happens to follow on the heap.
final class GuardedInputArray {
    /// Number of valid slots.
    let count: Int
    private let mapping: UnsafeMutableRawPointer
    private let mappingSize: Int
    private let slots: UnsafePointer<UInt64>

    /// Maps the slots (zero-filled: no event observed yet) plus a guard page.
    init(count: Int) throws(SystemCallError) {
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let slotBytes = count * MemoryLayout<UInt64>.stride
        let dataSize = (slotBytes + pageSize - 1) / pageSize * pageSize
        let size = dataSize + pageSize
        guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              mapping != UnsafeMutableRawPointer(bitPattern: -1)
        else {
            throw SystemCallError(call: "mmap")
        }
        guard mprotect(mapping + dataSize, pageSize, PROT_NONE) == 0 else {
            let error = SystemCallError(call: "mprotect")
            munmap(mapping, size)
            throw error
        }
        self.count = count
        self.mapping = mapping
        self.mappingSize = size
        self.slots = UnsafePointer((mapping + dataSize - slotBytes).bindMemory(to: UInt64.self, capacity: count))
    }

    deinit {
        munmap(mapping, mappingSize)
    }

    /// Slot `index`, unchecked on purpose: bounds are the caller's problem,
    /// which is the bug being re-enacted.
    subscript(index: Int) -> UInt64 {
        slots[index]
    }
}
