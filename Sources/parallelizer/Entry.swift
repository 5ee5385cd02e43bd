import AWSCore
import ArgumentParser

/// The entry point: the command line, read so that a preloaded library cannot hide it.
///
/// Swift on Linux finds `argv` by walking up from `environ` in a static initializer; a library preloaded with
/// `LD_PRELOAD` that calls `setenv` first (libfaketime does; some security agents do too) moves `environ`, and
/// `CommandLine.arguments` comes back empty (swiftlang/swift#76080). A daemon started that way would then see no
/// subcommand at all, so an empty list is taken from `/proc/self/cmdline` instead.
@main
enum Entry {
    static func main() async {
        await Parallelizer.main(Array(commandLine().dropFirst()))
    }

    static func commandLine() -> [String] {
        if !CommandLine.arguments.isEmpty { return CommandLine.arguments }
        guard let bytes = LocalFile.read("/proc/self/cmdline", limit: 1 << 20) else { return [] }
        var parts = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        if parts.last == "" { parts.removeLast() }
        return parts
    }
}
