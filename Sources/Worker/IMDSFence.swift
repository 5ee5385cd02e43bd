import AWSCore
@preconcurrency import Glibc
import Logging

/// Keeps a `runAsUser` command away from the instance metadata service, where the instance role's credentials and
/// the user-data are, when `passCredentials` is off: an nftables rule that rejects that user's packets to
/// 169.254.169.254 and fd00:ec2::254. The daemon (root) still reaches IMDS. The rule matches the socket's owner, so
/// it holds for every process the command starts under that user.
///
/// One table per user (`parallelizer_imds_<uid>`), replaced whole in one `nft -f` transaction at each start, so a
/// start after a `kill -9` finds no leftover to trip over, and two daemons with different users do not replace each
/// other's. It stays in place when the daemon exits: removing it would open IMDS to that user again while anything
/// of theirs still runs, or while another daemon with the same user does; keeping the role's credentials from that
/// user is right whether or not a daemon runs. (`nft delete table inet parallelizer_imds_<uid>` removes it.)
struct IMDSFence: Sendable {
    let nft: String
    let uid: UInt32
    let workDir: String

    var table: String { "parallelizer_imds_\(uid)" }

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
        table inet \(table)
        delete table inet \(table)
        table inet \(table) {
            chain output {
                type filter hook output priority filter; policy accept;
                meta skuid \(uid) ip daddr 169.254.169.254 counter reject
                meta skuid \(uid) ip6 daddr fd00:ec2::254 counter reject
            }
        }

        """
    }

    /// Whether the rule is in place now (`nft list table`).
    func isInPlace() async -> Bool {
        let log = workDir + "/imds-fence-check.log"
        defer { unlink(log) }
        let outcome = try? await ProcessRunner().run(
            argv: [nft, "list", "table", "inet", table], environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"],
            directory: "/", stdoutPath: log, stderrPath: log, user: nil, timeout: 30)
        return outcome?.succeeded == true
    }

    /// Puts the rule back if something removed it (an `nft flush ruleset`, a firewall reload): checked before each
    /// command, since nothing else would notice, and the command would reach the role's credentials.
    /// - Throws: `Failure` when it is gone and cannot be put back: the command must not run.
    func ensure(logger: Logger) async throws(Failure) {
        if await isInPlace() { return }
        logger.warning(
            "the IMDS fence was gone (nftables flushed or reloaded?): putting it back before the command runs",
            metadata: ["nft.table": "inet \(table)"])
        try await install()
    }

    func install() async throws(Failure) {
        let file = workDir + "/imds-fence.nft"
        let log = workDir + "/imds-fence.log"
        defer {
            unlink(file)
            unlink(log)
        }
        guard LocalFile.write(file, Array(rules.utf8), mode: 0o600) else {
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
            throw Failure(description: "nft could not install the rule (\(outcome.summary)): \(said.prefix(300))")

        }
    }
}
