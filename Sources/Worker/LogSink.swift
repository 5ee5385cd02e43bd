@preconcurrency import Glibc
import AWSCore
import FoundationEssentials
import Logging
import Synchronization

/// Where the daemon's log lines go: stderr (for the journal) and, once opened, the log file (append mode, so
/// `tail -F` follows it across restarts; mode 0640).
public final class LogSink: Sendable {
    public static let shared = LogSink()
    private let file = Mutex<Int32>(-1)

    /// Opens (creating) the log file. Returns an error text when it cannot.
    public func openFile(_ path: String) -> String? {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { return "cannot open log file \(path): \(String(cString: strerror(errno)))" }
        _ = fchmod(fd, 0o640)
        file.withLock { current in
            if current >= 0 { close(current) }
            current = fd
        }
        return nil
    }

    func write(_ line: String) {
        var bytes = Array(line.utf8)
        bytes.append(0x0a)
        file.withLock { fd in
            bytes.withUnsafeBytes { raw in
                _ = Glibc.write(2, raw.baseAddress, raw.count)
                if fd >= 0 { _ = Glibc.write(fd, raw.baseAddress, raw.count) }
            }
        }
    }
}

/// One human-readable line per event: `2026-11-23T10:00:00Z info    task done slot=1 task.key=a/b.txt ...`.
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let sink: LogSink

    public init(sink: LogSink = .shared) { self.sink = sink }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = CivilTime(date: Date()).iso8601
        let level = event.level.rawValue
        line += " " + level + String(repeating: " ", count: max(1, 8 - level.count)) + event.message.description
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line += " \(key)=\(Self.quote("\(value)"))"
        }
        sink.write(line)
    }

    /// Values with spaces, quotes, `=` or control characters are quoted and escaped, so a line stays one line.
    static func quote(_ value: String) -> String {
        if value.isEmpty { return "\"\"" }
        let needs = value.contains {
            $0 == " " || $0 == "\"" || $0 == "=" || $0.isNewline || ($0.asciiValue ?? 32) < 32
        }
        guard needs else { return value }
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 32 || scalar.value == 127 {
                    out += "\\x" + String(scalar.value, radix: 16)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    private static let bootstrapped: Void = { LoggingSystem.bootstrap { _ in LineLogHandler() } }()

    /// Installs this handler for the process (once).
    public static func bootstrap() { _ = bootstrapped }
}
