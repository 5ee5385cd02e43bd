@preconcurrency import Glibc
import AWSCore
import FoundationEssentials
import Logging
import Synchronization

/// Where the daemon's log lines go: stderr (for the journal) and, once opened, the log file (append mode, so
/// `tail -F` follows it across restarts; mode 0640).
///
/// When stderr is the journal's stream (`JOURNAL_STREAM` names its device and inode, as systemd sets it), each line
/// there starts with its syslog priority (`<3>` for an error), which journald takes off and keeps as the entry's
/// priority (`SyslogLevelPrefix`, on by default): `journalctl -u parallelizer -p warning` then shows warnings and
/// worse. The file gets the line alone.
public final class LogSink: Sendable {
    public static let shared = LogSink(journal: LogSink.stderrIsJournal(ProcessEnvironment.current()))
    private let file = Mutex<Int32>(-1)
    let journal: Bool

    init(journal: Bool = false) { self.journal = journal }

    /// Whether stderr is the stream `JOURNAL_STREAM` (`device:inode`) names.
    static func stderrIsJournal(_ environment: [String: String]) -> Bool {
        guard let value = environment.nonEmpty("JOURNAL_STREAM") else { return false }
        let parts = value.split(separator: ":")
        var st = stat()
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]), fstat(2, &st) == 0
        else { return false }
        return UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }

    /// The syslog priority of a level (RFC 5424): critical 2, error 3, warning 4, notice 5, info 6, debug 7.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .critical: return 2
        case .error: return 3
        case .warning: return 4
        case .notice: return 5
        case .info: return 6
        case .debug, .trace: return 7
        }
    }

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

    func write(_ line: String, level: Logger.Level = .info) {
        var bytes = Array(line.utf8)
        bytes.append(0x0a)
        let prefix = journal ? Array("<\(Self.priority(level))>".utf8) : []
        file.withLock { fd in
            (prefix + bytes).withUnsafeBytes { raw in _ = Glibc.write(2, raw.baseAddress, raw.count) }
            if fd >= 0 { bytes.withUnsafeBytes { raw in _ = Glibc.write(fd, raw.baseAddress, raw.count) } }
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
        sink.write(line, level: event.level)
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
