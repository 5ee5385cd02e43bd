import AWSCore
@preconcurrency import Glibc
import Logging

/// Keeps a `runAsUser` command away from the instance metadata service, where the instance role's credentials and
/// the user-data are, when `passCredentials` is off: an nftables rule that rejects that user's packets to
/// 169.254.169.254 and fd00:ec2::254, installed at start-up and removed at exit. The daemon (root) still reaches
/// IMDS. The rule matches the socket's owner, so it holds for every process the command starts under that user.
///
/// One table of the daemon's own, replaced whole in one `nft -f` transaction, so a start after a `kill -9` finds no
/// leftover to trip over.
struct IMDSFence: Sendable {
    static let table = "parallelizer_imds"
    let nft: String
    let uid: UInt32
    let workDir: String

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Finds `nft` (on `path`, or in the sbin folders).
    static func nftBinary(path: String) -> String? {
        ProcessRunner.resolve("nft", in: "/nonexistent", path: path + ":/usr/sbin:/sbin")
    }

    /// The rules, as an `nft -f` script: the table is created (empty) and deleted first, so the script works
    /// whether or not an earlier run left it.
    var rules: String {
        """
        table inet \(Self.table)
        delete table inet \(Self.table)
        table inet \(Self.table) {
            chain output {
                type filter hook output priority filter; policy accept;
                meta skuid \(uid) ip daddr 169.254.169.254 counter reject
                meta skuid \(uid) ip6 daddr fd00:ec2::254 counter reject
            }
        }

        """
    }

    func install() async throws(Failure) {
        try await apply(rules, doing: "install")
    }

    func remove(logger: Logger) async {
        do {
            try await apply("table inet \(Self.table)\ndelete table inet \(Self.table)\n", doing: "remove")
        } catch {
            logger.warning("cannot remove the IMDS rule for the run-as user", metadata: ["error": "\(error)"])
        }
    }

    private func apply(_ script: String, doing: String) async throws(Failure) {
        let file = workDir + "/imds-fence.nft"
        let log = workDir + "/imds-fence.log"
        defer {
            unlink(file)
            unlink(log)
        }
        guard LocalFile.write(file, Array(script.utf8), mode: 0o600) else {
            throw Failure(description: "cannot write \(file)")
        }
        let outcome: ProcessOutcome
        do {
            outcome = try await ProcessRunner().run(
                argv: [nft, "-f", file], environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], directory: "/",
                stdoutPath: log, stderrPath: log, user: nil, timeout: 30)
        } catch {
            throw Failure(description: "\(error)")
        }
        guard outcome.succeeded else {
            let said = LocalFile.readText(log)?.trimmingSpaces ?? ""
            throw Failure(description: "nft could not \(doing) the rule (\(outcome.summary)): \(said.prefix(300))")
        }
    }
}
