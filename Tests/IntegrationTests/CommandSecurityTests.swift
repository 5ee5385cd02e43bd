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
        env | grep -E '^AWS_(CONTAINER_|WEB_IDENTITY|ROLE_)' | sed 's/^/other=/' >> "$out"
        stat -c 'taskdir=%a' "$(dirname "$1")" >> "$out"
        # The daemon's own environment (its credentials) through /proc: readable by the same user only. (In a PID
        # namespace the command's parent is outside it and $PPID is 0: the daemon is found by its command line.)
        daemon=0
        for p in /proc/[0-9]*; do
          case "$(tr '\\0' ' ' < "$p/cmdline" 2>/dev/null)" in *"parallelizer run"*) daemon=${p#/proc/}; break ;; esac
        done
        [ "$daemon" != 0 ] || echo "daemon=notfound" >> "$out"
        if tr '\\0' '\\n' < /proc/$daemon/environ > /dev/null 2>&1; then echo "daemonenv=readable" >> "$out"
        else echo "daemonenv=denied" >> "$out"; fi
        echo "$out"
        """

    @Test(arguments: [false, true])
    func credentialsReachTheCommandOnlyWhenAskedFor(pass: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("a.txt", "a")
            try await h.send(["a.txt"])
            // Every other way an SDK finds credentials: a container's endpoint and its token, a web identity.
            let others = [
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.2/creds",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": "container-token", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/t",
                "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r",
            ]
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["passCredentials": "\(pass)"],
                    program: h.script("report.sh", Self.report)), environment: others)
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            let report = try await h.output("a.txt.report")
            let secret = try TestEnvironment.motoCredentials().secretAccessKey
            #expect(report.contains("secret=\(secret)") == pass)
            #expect(report.contains("secret=none") == !pass)
            for name in others.keys { #expect(report.contains("other=\(name)=") == pass, "\(name): \(report)") }
            #expect(report.contains("taskdir=700"))
            var info = stat()
            #expect(
                stat(dir + "/worker.log", &info) == 0 && info.st_mode & 0o777 == 0o640, "the log file is not mode 0640")
        }
    }

    @Test(.enabled(if: getuid() == 0, "switching users needs root"))
    func runAsUserRunsTheCommandAsThatUser() async throws {
        guard let nobody = RunAsUser.lookup("nobody") else {
            Issue.record("no 'nobody' user")
            return
        }
        try await withTemporaryDirectory { dir in
            _ = chmod(dir, 0o755)
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("a.txt", "a")
            try await h.send(["a.txt"])
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["runAsUser": "nobody"],
                    program: h.script("report.sh", Self.report)))
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            let report = try await h.output("a.txt.report")
            #expect(report.contains("uid=\(nobody.uid)"))
            #expect(report.contains("secret=none"))
            #expect(report.contains("daemonenv=denied"), "the command could read the daemon's environment: \(report)")
            // With a /proc of the namespace's own the daemon is not even there to try; with the host's, it must be
            // found (else the check above proves nothing).
            let ownProc = h.log("w").contains("/proc: their own")
            #expect(report.contains("daemon=notfound") == ownProc, "\(report)")
            // The daemon leaves its IMDS rule in place on purpose (IMDSFence); the test takes it off this machine.
            if let nft = try? RequiredTool.require("nft", package: "nftables") {
                _ = try? await Scripts.run(
                    nft, ["delete", "table", "inet", "parallelizer_imds_\(nobody.uid)"],
                    environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], directory: dir)
            }

        }
    }
}

/// TLS verification has no off switch: user-data that asks for one is warned about, and a server with a
/// self-signed certificate is refused.
@Suite(.timeLimit(.minutes(2)))
struct TransportSecurityTests {
    @Test func userDataCannotTurnOffCertificateChecks() async throws {
        try await withTemporaryDirectory { dir in
            let keygen = try await Scripts.run(
                try RequiredTool.require("openssl", package: "openssl"),
                [
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir + "/key.pem", "-out",
                    dir + "/cert.pem",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                ], environment: ["PATH": "/usr/bin:/bin"], directory: dir)
            try #require(keygen.succeeded, "\(keygen.stderr)")
            // The server picks its own free port and writes it down once it listens (a fixed wait flaked under load).
            let server = try ProcessRunner().start(
                argv: [
                    "/usr/bin/env", "python3", "-c",
                    """
                    import http.server, ssl
                    class H(http.server.BaseHTTPRequestHandler):
                        def do_POST(self):
                            open("\(dir)/served", "a").write(self.path + "\\n")
                            self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
                        do_GET = do_POST
                    server = http.server.HTTPServer(("127.0.0.1", 0), H)
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    context.load_cert_chain("\(dir)/cert.pem", "\(dir)/key.pem")
                    server.socket = context.wrap_socket(server.socket, server_side=True)
                    open("\(dir)/port.tmp", "w").write(str(server.server_address[1]))
                    __import__("os").rename("\(dir)/port.tmp", "\(dir)/port")
                    server.serve_forever()
                    """,
                ], environment: ProcessEnvironment.current(), directory: dir, stdoutPath: dir + "/https.out",
                stderrPath: dir + "/https.err")
            defer { server.signal(SIGKILL) }
            let port = try #require(await portWritten(to: dir + "/port"), "the HTTPS server did not start")
            LocalFile.write(
                dir + "/params",
                Array(
                    """
                    queueURL=https://127.0.0.1:\(port)/123456789012/q
                    inputBucket=in-bucket
                    outputBucket=out-bucket
                    analysisProgram=/bin/true
                    workDir=\(dir)/work
                    logFile=\(dir)/worker.log
                    sslVerify=false
                    verifySSL=false
                    insecure=true
                    noVerifySSL=true
                    caBundle=\(dir)/cert.pem
                    """.utf8))
            let worker = try ProcessRunner().start(
                argv: [WorkerHarness.binary, "run", "--config", dir + "/params"],
                environment: [
                    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example-secret-key-0000",
                    "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": "https://127.0.0.1:\(port)",
                    "AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/bin:/bin", "HOME": dir,
                ],
                directory: dir, stdoutPath: dir + "/w.out", stderrPath: dir + "/w.err")
            let outcome = await worker.wait(timeout: 60)
            let log = LocalFile.readText(dir + "/w.err") ?? ""
            #expect(outcome == .exited(1), "\(log)")
            #expect(log.contains("SSL certificate problem") || log.contains("certificate"), "\(log)")
            for key in ["sslVerify", "verifySSL", "insecure", "noVerifySSL", "caBundle"] {
                #expect(log.contains(key), "'\(key)' was not warned about as unknown")
            }
            #expect(!fileExists(dir + "/served"), "a request got through an unverified TLS connection")
        }
    }
}
