import AWSCore
import TestSupport
import Testing
@testable import Worker

/// What a worker uploads of its log when its run ends: the whole file when it is small, else its last bytes from
/// a line's start, saying what was left out.
struct LogTailTests {
    @Test func aLongLogIsCutAtALineAndSaysSo() async throws {
        try await withTemporaryDirectory { dir in
            let lines = (0..<1000).map { "2026-12-07T10:00:00Z info    line \($0)" }
            let text = lines.joined(separator: "\n") + "\n"
            _ = LocalFile.write(dir + "/log", Array(text.utf8))
            #expect(Daemon.logTail(dir + "/log", limit: 1 << 20).map { String(decoding: $0, as: UTF8.self) } == text)
            let tail = try #require(Daemon.logTail(dir + "/log", limit: 500)).map { $0 }
            let shown = String(decoding: tail, as: UTF8.self).split(separator: "\n").map(String.init)
            #expect(
                shown.first?.hasPrefix("[... ") == true
                    && shown.first?.hasSuffix(" earlier bytes of this log left out ...]") == true)
            #expect(shown.dropFirst().allSatisfy { lines.contains($0) }, "whole lines only")
            #expect(shown.last == "2026-12-07T10:00:00Z info    line 999")
            #expect(Daemon.logTail(dir + "/none", limit: 10) == nil)
        }
    }
}
