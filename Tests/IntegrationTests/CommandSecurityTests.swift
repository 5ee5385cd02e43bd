import AWSCore
@preconcurrency import Glibc
import TestSupport
import Testing
import Worker

/// What the command can see: no AWS credentials unless asked for, and with `runAsUser`, another user's identity.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct CommandSecurityTests {
    static let report = """
        out="$1.report"
        echo "uid=$(id -u)" > "$out"
        echo "secret=${AWS_SECRET_ACCESS_KEY:-none}" >> "$out"
        echo "key=${AWS_ACCESS_KEY_ID:-none}" >> "$out"
        stat -c 'taskdir=%a' "$(dirname "$1")" >> "$out"
        echo "$out"
        """

    @Test(arguments: [false, true])
    func credentialsReachTheCommandOnlyWhenAskedFor(pass: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("a.txt", "a")
            try await h.send(["a.txt"])
            let worker = try h.startWorker(name: "w", parameters: h.parameters(["passCredentials": "\(pass)"],
                                                                                   program: h.script("report.sh", Self.report)))
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            let report = try await h.output("a.txt.report")
            let secret = try TestEnvironment.motoCredentials().secretAccessKey
            #expect(report.contains("secret=\(secret)") == pass)
            #expect(report.contains("secret=none") == !pass)
            #expect(report.contains("taskdir=700"))
        }
    }

    @Test(.enabled(if: getuid() == 0, "switching users needs root"))
    func runAsUserRunsTheCommandAsThatUser() async throws {
        guard let nobody = RunAsUser.lookup("nobody") else { Issue.record("no 'nobody' user"); return }
        try await withTemporaryDirectory { dir in
            _ = chmod(dir, 0o755)
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("a.txt", "a")
            try await h.send(["a.txt"])
            let worker = try h.startWorker(name: "w", parameters: h.parameters(["runAsUser": "nobody"],
                                                                                   program: h.script("report.sh", Self.report)))
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            let report = try await h.output("a.txt.report")
            #expect(report.contains("uid=\(nobody.uid)"))
            #expect(report.contains("secret=none"))
        }
    }
}
