import Logging
import Operators
import Testing

/// The fleet's logs merged as `parallelizer logs` prints them.
struct LogMergeTests {
    func source(_ instance: String, _ lines: [String]) -> LogMerge.Source {
        var rest = lines[...]
        return LogMerge.Source(instance: instance) { rest.popFirst() }
    }

    @Test func linesComeInTimeOrderEachHeadedByItsInstance() {
        var out: [String] = []
        LogMerge.merge([
            source("a", ["2026-12-07T10:00:01Z info    one", "2026-12-07T10:00:03Z warning three", "  its detail"]),
            source("b", ["2026-12-07T10:00:02Z error   two", "2026-12-07T10:00:03Z info    tie"]),
        ]) { out.append($0) }
        #expect(
            out == [
                "a 2026-12-07T10:00:01Z info    one", "b 2026-12-07T10:00:02Z error   two",
                "a 2026-12-07T10:00:03Z warning three", "a   its detail", "b 2026-12-07T10:00:03Z info    tie",
            ])
    }

    @Test func aLevelKeepsThatLevelAndWorseWithTheirContinuations() {
        var out: [String] = []
        LogMerge.merge(
            [
                source(
                    "a",
                    [
                        "2026-12-07T10:00:01Z info    chatter", "  more chatter", "2026-12-07T10:00:02Z error   bad",
                        "  why", "2026-12-07T10:00:03Z critical worse",
                    ])
            ], atLeast: .warning
        ) { out.append($0) }
        #expect(
            out == [
                "a 2026-12-07T10:00:02Z error   bad", "a   why", "a 2026-12-07T10:00:03Z critical worse",
            ])
    }
}
