import AWSCore
import ArgumentParser
import CGlibcCompat

/// The entry point: the command line, read so that a preloaded library cannot hide it.
///
/// Swift on Linux finds `argv` by walking up from `environ` in a static initializer; a library preloaded with
/// `LD_PRELOAD` that calls `setenv` first (libfaketime does; some security agents do too) moves `environ`, and
/// `CommandLine.arguments` comes back empty (swiftlang/swift#76080). A daemon started that way would then see no
/// subcommand at all, so an empty list is taken from `/proc/self/cmdline` instead.
@main
enum Entry {
    static func main() async {
        // A fixed threshold: blocks of 128 KiB and up are mapped and handed back when freed. glibc's default raises
        // the threshold each time such a block is freed, after which transfer buffers come from the heap and stay
        // resident: a worker moving 1 GiB in and out then kept 8.5 MiB more than one moving 10 MiB; now 3.5 MiB.
        pz_fix_mmap_threshold(128 << 10)
        await Parallelizer.main(Array(commandLine().dropFirst()))
    }

    static func commandLine() -> [String] {
        if !CommandLine.arguments.isEmpty { return CommandLine.arguments }
        guard let bytes = LocalFile.read("/proc/self/cmdline", limit: 1 << 20) else { return [] }
        var parts = bytes.split(separator: 0, omittingEmptySubsequences: false).map {
            String(decoding: $0, as: UTF8.self)
        }
        if parts.last == "" { parts.removeLast() }
        return parts
    }
}
