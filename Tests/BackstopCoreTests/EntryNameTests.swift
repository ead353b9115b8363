import Testing
@testable import BackstopCore

@Suite("Entry names: strict UTF-8 and escaped control characters")
struct EntryNameTests {
    @Test("control characters (C0, DEL, C1) are escaped; other text, a backslash included, is shown as it is")
    func escaping() {
        #expect(EntryName.escaped("rules/main.rules") == "rules/main.rules")
        #expect(EntryName.escaped("règles ü\\x") == "règles ü\\x")
        #expect(EntryName.escaped("a\nb\rc\td") == "a\\nb\\rc\\td")
        #expect(EntryName.escaped("\u{1b}[2J\u{7f}\u{0}") == "\\x1b[2J\\x7f\\x00")
        #expect(EntryName.escaped("c1\u{9b}31m\u{85}") == "c1\\u{9b}31m\\u{85}")
    }

    @Test("bytes are text only when they are valid UTF-8; invalid bytes are shown as \\xNN, never as U+FFFD")
    func strictDecoding() {
        #expect(EntryName.decode(Array("règles".utf8)) == "règles")
        #expect(EntryName.decode([0x6c, 0x61, 0x74, 0xe9]) == nil)
        #expect(EntryName.decode([0xc0, 0xaf]) == nil, "an overlong /")
        #expect(EntryName.decode([0xed, 0xa0, 0x80]) == nil, "a surrogate")
        #expect(EntryName.shown(bytes: [0x6c, 0x61, 0x74, 0xe9] + Array(".conf ü\n".utf8)) == "lat\\xe9.conf ü\\n")
        #expect(throws: StoreError.refusedEntry(path: "top/lat\\xe9", reason: "has a name that is not valid UTF-8")) {
            try EntryName.text([0x6c, 0x61, 0x74, 0xe9], in: "top")
        }
        #expect(throws: StoreError.refusedEntry(path: "link", reason: "is a symlink whose target is not valid UTF-8 (tg\\xff)")) {
            try EntryName.text([0x74, 0x67, 0xff], linkOf: "link")
        }
    }
}
