@preconcurrency import Glibc
import AWSSigV4
import FoundationEssentials
import Logging

/// One human-readable line per event on stderr: `2026-11-23T10:00:00Z info  message key=value ...`.
struct LineLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    let label: String

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let now = Date().timeIntervalSince1970
        var line = CivilTime(epochSeconds: Int64(now)).iso8601
        line += " " + event.level.rawValue.padding(7) + event.message.description
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line += " \(key)=\(Self.quote("\(value)"))"
        }
        line += "\n"
        _ = line.withCString { fputs($0, stderr) }
    }

    static func quote(_ value: String) -> String {
        if value.isEmpty { return "\"\"" }
        if value.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" || $0.isNewline }) {
            var escaped = value.replacing("\\", with: "\\\\").replacing("\"", with: "\\\"")
            escaped = escaped.replacing("\n", with: "\\n")
            return "\"\(escaped)\""
        }
        return value
    }
}

enum LoggingSetup {
    private static let once: Void = {
        LoggingSystem.bootstrap { label in LineLogHandler(label: label) }
    }()

    static func bootstrapOnce() { _ = once }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self + " " : self + String(repeating: " ", count: width - count) }
}
