import Logging

/// The fleet's logs as one: each instance's lines (as the daemon writes them, `2026-12-07T15:00:00Z info    ...`)
/// merged in time order, each headed by its instance. A line that does not start with a time (none should) keeps
/// the time of the line before it, so it stays with it.
public struct LogMerge {
    /// One instance's lines, read one at a time.
    public struct Source {
        public let instance: String
        let next: () -> String?
        var current: (time: String, line: String)?
        var lastTime = ""

        public init(instance: String, next: @escaping () -> String?) {
            self.instance = instance
            self.next = next
        }

        mutating func advance() {
            guard let line = next() else {
                current = nil
                return
            }
            let time = LogMerge.time(of: line) ?? lastTime
            lastTime = time
            current = (time, line)
        }
    }

    /// `2026-12-07T15:00:00Z` at a line's start, or nil.
    static func time(of line: String) -> String? {
        let head = line.prefix(20)
        guard head.count == 20, head.first?.isNumber == true, head.last == "Z",
            head.dropFirst(10).first == "T"
        else { return nil }
        return String(head)
    }

    /// The level word after the time, as a `Logger.Level`.
    static func level(of line: String) -> Logger.Level? {
        let words = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        return words.count >= 2 ? Logger.Level(rawValue: String(words[1])) : nil
    }

    /// Emits every line of `sources` in time order (ties in the sources' order) as `instance line`; with `atLeast`,
    /// only lines of that level or worse (a line without a level goes with the one before it).
    public static func merge(_ sources: [Source], atLeast minimum: Logger.Level? = nil, emit: (String) -> Void) {
        var sources = sources
        for index in sources.indices { sources[index].advance() }
        var keep = [Bool](repeating: true, count: sources.count)
        while true {
            var best: Int?
            for index in sources.indices {
                guard let current = sources[index].current else { continue }
                if best == nil || current.time < sources[best!].current!.time { best = index }
            }
            guard let index = best, let (_, line) = sources[index].current else { return }
            if let minimum {
                if let level = level(of: line) { keep[index] = level >= minimum }
            }
            if keep[index] { emit(sources[index].instance + " " + line) }
            sources[index].advance()
        }
    }
}
