import Worker

/// A program from Debian that a test runs as a user would (`zip`, `openssl`, `nft`). `scripts/test` installs each one
/// it can; where it could not, the test that needs it fails with one line naming the package, never with a shell's
/// "not found" in the middle of its output.
public enum RequiredTool {
    public struct Missing: Error, CustomStringConvertible {
        public let program: String
        public let package: String
        public var description: String {
            "\(program) is not installed: it comes in Debian's package \(package) (scripts/test installs it when it can)"
        }
    }

    /// The program's path on PATH (or in /usr/sbin and /sbin, where Debian puts administrators' tools).
    /// - Throws: `Missing`, naming the package.
    @discardableResult
    public static func require(_ program: String, package: String) throws -> String {
        let path = (TestEnvironment.environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        guard let found = ProcessRunner.resolve(program, in: "/", path: path) else {
            throw Missing(program: program, package: package)
        }
        return found
    }
}
